"""Proximal maps and their vector-Jacobian products for the ADMM rule (batched, torch only).

The code generator copies top-level functions of this file verbatim into generated modules.
"""

import math

import torch
