"""Compile the real train step for a target you do not own and say what it will cost.

    python -m lmsgd.plan --config configs/imagenet_resnet50_akiba32k.py --target tpu:v5p:8x8x16

Library: `lmsgd.plan.plan(config, "tpu:v5p:8x8x16") -> Plan`. See docs/planning.md.
"""

from lmsgd.plan.estimate import ASSUMPTIONS, Assumptions, Estimate
from lmsgd.plan.hardware import HARDWARE, Hardware
from lmsgd.plan.planner import Plan, plan
from lmsgd.plan.targets import ALIASES, PlanError, Target, parse_target

__all__ = [
    "ALIASES",
    "ASSUMPTIONS",
    "HARDWARE",
    "Assumptions",
    "Estimate",
    "Hardware",
    "Plan",
    "PlanError",
    "Target",
    "parse_target",
    "plan",
]
