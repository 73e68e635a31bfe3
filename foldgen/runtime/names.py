"""Every runtime name a rule puts in a problem record, in one place: the entry points of
each rule and one table per choice a plan makes by name.

Not copied into generated modules (foldgen.link reads only the modules it lists);
tests/test_emission.py checks that every name here is a definition of the runtime.
"""

#: PGD: the feasible-set record (foldgen.runtime.sets) for each projection kind.
SETS = {
    "none": "_SPACE",
    "box": "_BOX",
    "box_sum": "_BOX_SUM",
    "box_wsum": "_BOX_WSUM",
    "affine": "_AFFINE",
    "affine_row": "_AFFINE_ROW",
    "halfspace": "_HALFSPACE",
    "ball": "_BALL",
    "l1ball": "_L1BALL",
    "psd": "_PSD",
    "soc": "_SOC",
}

#: ADMM: the prox record (foldgen.runtime.admm) for each block kind.
PROXES = {
    "l1": "_ADMM_L1",
    "box": "_ADMM_BOX",
    "ball": "_ADMM_BALL",
    "l1ball": "_ADMM_L1BALL",
    "linf": "_ADMM_LINF",
    "hinge": "_ADMM_HINGE",
    "l2": "_ADMM_L2",
    "sum_largest": "_ADMM_SUM_LARGEST",
    "psd": "_ADMM_PSD",
    "soc": "_ADMM_SOC",
}

#: PGD: the solve function for each step mode.
PGD_SOLVES = {
    "fixed": "_pgd_solve_fixed",
    "lipschitz": "_pgd_solve_lipschitz",
    "scaled": "_pgd_solve_scaled",
    "bb": "_pgd_solve_bb",
}

#: PGD's entry points, whatever the step mode and set.
PGD = {
    "pullback": "_pgd_pullback",
    "update_map": "_pgd_update_map",
    "no_set_data": "_no_set_data",
    "check_step_size": "_check_step_size",
    "check_compile": "_check_compile",
}

#: ADMM's entry points, and its functions for a quadratic f₀ (one factor) or not (Newton).
ADMM = {
    "pullback": "_admm_backward",
    "update_map": "_admm_update_map",
    "check_rho": "_check_rho",
    "check_adapt_rho": "_check_adapt_rho",
}
ADMM_VARIANTS = {
    variant: {
        "solve": f"_admm_solve_{variant}",
        "prepare": f"_admm_prepare_{variant}",
        "x_update": f"_admm_x_update_{variant}",
    }
    for variant in ("quadratic", "newton")
}

#: SQP's entry points, and its functions for a kind of constraint the problem has or lacks.
SQP = {
    "solve": "_sqp_solve",
    "pullback": "_sqp_pullback",
    "update_map": "_sqp_update_map",
    "check_step": "_check_step",
    "inequalities": "_sqp_inequalities",
    "equalities": "_sqp_equalities",
    "inequality_jacobian": "_sqp_inequality_jacobian",
    "equality_jacobian": "_sqp_equality_jacobian",
    "no_constraints": "_sqp_no_constraints",
    "no_jacobian": "_sqp_no_jacobian",
}
