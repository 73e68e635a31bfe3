"""The runtime names the rules choose by: one table per choice a plan makes by name.

Not copied into generated modules (foldgen.link reads only the modules it lists); the
tests check that every name here is a definition of the runtime.
"""

#: PGD: the feasible-set record (foldgen.runtime.sets) for each projection kind.
SETS = {
    "none": "_SPACE",
    "box": "_BOX",
    "box_sum": "_BOX_SUM",
    "affine": "_AFFINE",
    "affine_row": "_AFFINE_ROW",
    "halfspace": "_HALFSPACE",
    "ball": "_BALL",
}

#: ADMM: the prox record (foldgen.runtime.admm) for each block kind.
PROXES = {"l1": "_ADMM_L1", "box": "_ADMM_BOX", "ball": "_ADMM_BALL"}

#: PGD: the solve function for each step mode.
PGD_SOLVES = {
    "fixed": "_pgd_solve_fixed",
    "lipschitz": "_pgd_solve_lipschitz",
    "scaled": "_pgd_solve_scaled",
    "bb": "_pgd_solve_bb",
}
