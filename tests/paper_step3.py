"""Published figures of the Step-3 paper (arXiv 2507.19427v1), as printed: the independent reference.

Tables 2/3: per decoded token, A = KV/state bytes, B = attention FLOPs (at 8K and 32K), C = linear FLOPs,
D = FFN FLOPs. Table 6: USD per 1M decoded tokens on H800/H20/A800/910B.
"""

MODELS = {
    # id: (A 8K, B 8K, A 32K, B 32K, C, D)
    "deepseek-v3": (2.88e8, 1.47e11, 1.15e9, 5.89e11, 2.28e10, 4.84e10),
    "kimi-k2": (2.88e8, 7.37e10, 1.15e9, 2.95e11, 1.23e10, 4.84e10),
    "qwen3-235b-a22b": (7.89e8, 2.52e10, 3.15e9, 1.01e11, 1.34e10, 2.84e10),
    "qwen3-32b": (1.07e9, 1.72e10, 4.29e9, 6.87e10, 1.21e10, 5.03e10),
    "llama4-maverick": (1.01e9, 8.05e9, 2.21e9, 1.41e10, 6.04e9, 2.42e10),
    "minimax-m1": (9.23e8, 3.42e9, 1.93e9, 1.15e10, 3.75e10, 5.44e10),
    "ernie-4.5-300b-a47b": (9.06e8, 1.45e10, 3.62e9, 5.80e10, 1.63e10, 7.61e10),
    "pangu-pro-moe": (8.05e8, 8.05e9, 3.22e9, 3.22e10, 6.04e9, 2.38e10),
    "step3": (2.56e8, 3.27e10, 1.02e9, 1.31e11, 2.07e10, 5.33e10),
}

CHIPS = ("h800", "h20", "a800", "ascend-910b")

COST = {
    # id: (attention 8K per chip, attention 32K per chip, FFN per chip)
    "deepseek-v3": ((.054, .128, .114, .113), (.197, .460, .409, .407), (.014, .036, .032, .032)),
    "kimi-k2": ((.051, .065, .057, .057), (.194, .231, .205, .204), (.014, .036, .032, .032)),
    "qwen3-235b-a22b": ((.135, .054, .091, .101), (.527, .185, .338, .376), (.008, .021, .019, .019)),
    "qwen3-32b": ((.181, .069, .120, .133), (.716, .248, .455, .508), (.014, .038, .034, .033)),
    "llama4-maverick": ((.169, .060, .109, .121), (.369, .128, .235, .262), (.007, .018, .016, .016)),
    "minimax-m1": ((.164, .079, .121, .132), (.330, .135, .226, .249), (.015, .041, .036, .036)),
    "ernie-4.5-300b-a47b": ((.155, .063, .105, .116), (.606, .214, .388, .432), (.021, .057, .051, .051)),
    "pangu-pro-moe": ((.135, .049, .088, .098), (.536, .183, .340, .379), (.007, .018, .016, .016)),
    "step3": ((.048, .040, .040, .043), (.176, .114, .120, .133), (.015, .040, .036, .035)),
}

# Observation 1: best total per 1M decoded tokens (attention and FFN each on its cheapest chip).
OBSERVATION_1 = {
    8192: {"step3": 0.055, "deepseek-v3": 0.068, "qwen3-235b-a22b": 0.062},
    32768: {"step3": 0.129, "deepseek-v3": 0.211, "qwen3-235b-a22b": 0.193},
}

# Figure 4: decode cost on 910B alone (attention + FFN).
FIGURE_4_910B = {8192: {"pangu-pro-moe": 0.114, "step3": 0.078}, 32768: {"pangu-pro-moe": 0.395, "step3": 0.168}}

# Hybrid models, whose accounting the paper describes only in prose, get 3%.
LOOSE = {"llama4-maverick", "minimax-m1"}


def tolerance(model: str) -> float:
    return 0.03 if model in LOOSE else 0.02


def close(ours: float, printed: float, rel: float) -> bool:
    """Within `rel`, or within the rounding of the printed value (3 decimals / 3 significant digits)."""
    if abs(ours - printed) <= rel * abs(printed):
        return True
    text = f"{printed:.3e}" if printed >= 1 else f"{printed:.3f}"
    half_unit = 0.5 * 10 ** (int(text.split("e")[1]) - 2) if "e" in text else 0.0005
    return abs(ours - printed) <= half_unit
