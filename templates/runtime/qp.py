"""A batched dense QP solver and its KKT differentiation for the SQP rule (torch only).

The code generator copies top-level functions of this file verbatim into generated modules.
"""

import math

import torch
