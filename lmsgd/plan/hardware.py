"""Accelerator figures the planner's estimates rest on, each with its source.

All figures are per device *as the vendor counts it* (one GPU, one TPU chip), dense (no
structured sparsity), in SI units: FLOP/s, bytes, bytes/s. Link bandwidths are per direction.
Efficiency factors are not here: they are assumptions, kept in `estimate.Assumptions`.
"""

from __future__ import annotations

import dataclasses
import os

GB = 1e9
GiB = 2**30
TFLOPS = 1e12


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One accelerator model and the network it usually sits in.

    Attributes:
      name: table key (`p100`, `v5p`, ...).
      description: the product, spelled out.
      peak_flops: dense peak FLOP/s per device by compute dtype. GPUs: `float32` is the
        plain FP32 rate, `tf32` the tensor-core rate XLA uses for float32 matmuls/convs on
        Ampere and later; TPUs: `bfloat16` (XLA's default precision runs float32 dots as one
        bfloat16 pass, so float32 models also run at this rate).
      hbm_bytes: device memory, bytes.
      hbm_bandwidth: device memory bandwidth, bytes/s.
      intra_bandwidth: per device, per direction, bytes/s, over the fast fabric that all-reduces
        use inside a node / slice (NVLink, PCIe, TPU ICI all-reduce bandwidth).
      inter_bandwidth: per *node*, per direction, bytes/s, across nodes (InfiniBand, Ethernet,
        TPU DCN); 0 when the target never leaves the fast fabric.
      devices_per_node: GPUs per server (default of `gpu:` targets), TPU chips per host.
      sources: where each figure comes from, by field name.
      host_cpus: logical CPUs (hardware threads, vCPUs) of the host that serves
        `devices_per_node` devices, which decode and augment its images; 0 = not known.
      host_description: that host's CPUs spelled out.
    """

    name: str
    description: str
    kind: str  # "gpu", "tpu" or "cpu"
    peak_flops: dict[str, float]
    hbm_bytes: float
    hbm_bandwidth: float
    intra_bandwidth: float
    inter_bandwidth: float
    devices_per_node: int
    sources: dict[str, str]
    host_cpus: int = 0
    host_description: str = ""

    def peak_for(self, compute_dtype: str) -> tuple[float, str]:
        """(peak FLOP/s per device, the rate's name) for a model's compute dtype."""
        if self.kind == "tpu" or compute_dtype != "float32":
            key = "bfloat16" if "bfloat16" in self.peak_flops else "float16"
        else:
            key = "tf32" if "tf32" in self.peak_flops else "float32"
        return self.peak_flops[key], key

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_NV_P100 = "NVIDIA Tesla P100 datasheet (2016; SXM2 'for NVLink-optimized servers' and PCIe)"
_NV_V100 = "NVIDIA Tesla V100 datasheet (2017/2018, SXM2)"
_NV_A100 = "NVIDIA A100 Tensor Core GPU datasheet (2021, SXM4 80GB)"
_NV_H100 = "NVIDIA H100 Tensor Core GPU datasheet (2023, SXM5)"
_DGX1 = "NVIDIA DGX-1 datasheet: 4 x 100 Gb/s EDR InfiniBand per node"
_GTPU = "Google Cloud TPU documentation, 'TPU {v}' system architecture page"

HARDWARE: dict[str, Hardware] = {
    "p100": Hardware(
        "p100", "NVIDIA Tesla P100 SXM2 16 GB (NVLink), DGX-1 style node", "gpu",
        {"float32": 10.6 * TFLOPS, "float16": 21.2 * TFLOPS},
        16 * GB, 732 * GB, 80 * GB, 50 * GB, 8,
        {"peak_flops": _NV_P100, "hbm": _NV_P100 + ": 16 GB HBM2, 732 GB/s",
         "intra_bandwidth": _NV_P100 + ": NVLink 160 GB/s bidirectional", "inter_bandwidth": _DGX1,
         "host_cpus": "NVIDIA DGX-1 datasheet: 2 x Intel Xeon E5-2698 v4 (20 cores each)"},
        host_cpus=80, host_description="DGX-1: 2 x 20-core Xeon E5-2698 v4, 2 threads per core",
    ),
    "p100-pcie": Hardware(
        "p100-pcie", "NVIDIA Tesla P100 PCIe 16 GB (the paper's MN-1 cluster)", "gpu",
        {"float32": 9.3 * TFLOPS, "float16": 18.7 * TFLOPS},
        16 * GB, 732 * GB, 16 * GB, 14 * GB, 8,
        {"peak_flops": _NV_P100, "hbm": _NV_P100 + ": 16 GB HBM2, 732 GB/s",
         "intra_bandwidth": "PCI Express 3.0 x16: 32 GB/s bidirectional (16 per direction)",
         "inter_bandwidth": "Akiba et al. 2017 (MN-1): two FDR InfiniBand links per node, "
                            "2 x 56 Gbit/s = 14 GB/s",
         "host_cpus": "Akiba et al. 2017, section 4: two Intel Xeon E5-2667 (8 cores each) per "
                      "MN-1 node"},
        host_cpus=32, host_description="MN-1 node: 2 x 8-core Xeon E5-2667 v4, 2 threads per core",
    ),
    "p100-bigbasin": Hardware(
        "p100-bigbasin", "NVIDIA Tesla P100 SXM2 16 GB in Facebook Big Basin servers", "gpu",
        {"float32": 10.6 * TFLOPS, "float16": 21.2 * TFLOPS},
        16 * GB, 732 * GB, 80 * GB, 6.25 * GB, 8,
        {"peak_flops": _NV_P100, "hbm": _NV_P100 + ": 16 GB HBM2, 732 GB/s",
         "intra_bandwidth": _NV_P100 + ": NVLink 160 GB/s bidirectional",
         "inter_bandwidth": "Goyal et al. 2017, section 5: 8 NVLink-connected P100s per Big "
                            "Basin server, 50 Gbit/s Ethernet per server = 6.25 GB/s"},
    ),
    "v100": Hardware(
        "v100", "NVIDIA Tesla V100 SXM2 32 GB, DGX-1 style node", "gpu",
        {"float32": 15.7 * TFLOPS, "float16": 125 * TFLOPS},
        32 * GB, 900 * GB, 150 * GB, 50 * GB, 8,
        {"peak_flops": _NV_V100 + ": FP32 15.7, Tensor 125 TFLOPS",
         "hbm": _NV_V100 + ": 32 GB HBM2, 900 GB/s",
         "intra_bandwidth": _NV_V100 + ": NVLink 300 GB/s (bidirectional)",
         "inter_bandwidth": _DGX1,
         "host_cpus": "NVIDIA DGX-1 (V100) datasheet: 2 x Intel Xeon E5-2698 v4 (20 cores each)"},
        host_cpus=80, host_description="DGX-1: 2 x 20-core Xeon E5-2698 v4, 2 threads per core",
    ),
    "a100": Hardware(
        "a100", "NVIDIA A100 SXM4 80 GB, DGX A100 node", "gpu",
        {"float32": 19.5 * TFLOPS, "tf32": 156 * TFLOPS, "bfloat16": 312 * TFLOPS,
         "float16": 312 * TFLOPS},
        80 * GB, 2039 * GB, 300 * GB, 200 * GB, 8,
        {"peak_flops": _NV_A100 + ": FP32 19.5, TF32 156, BF16/FP16 312 TFLOPS (dense)",
         "hbm": _NV_A100 + ": 80 GB HBM2e, 2,039 GB/s",
         "intra_bandwidth": _NV_A100 + ": NVLink 600 GB/s (bidirectional)",
         "inter_bandwidth": "NVIDIA DGX A100 datasheet: 8 x 200 Gb/s HDR InfiniBand per node",
         "host_cpus": "NVIDIA DGX A100 datasheet: dual AMD Rome 7742, 128 cores total"},
        host_cpus=256, host_description="DGX A100: 2 x 64-core AMD EPYC 7742, 2 threads per core",
    ),
    "h100": Hardware(
        "h100", "NVIDIA H100 SXM5 80 GB, DGX H100 node", "gpu",
        {"float32": 67 * TFLOPS, "tf32": 494.7 * TFLOPS, "bfloat16": 989.4 * TFLOPS,
         "float16": 989.4 * TFLOPS},
        80 * GB, 3350 * GB, 450 * GB, 400 * GB, 8,
        {"peak_flops": _NV_H100 + ": FP32 67, TF32 989 / BF16 1,979 TFLOPS with sparsity, "
                                  "half that dense",
         "hbm": _NV_H100 + ": 80 GB HBM3, 3.35 TB/s",
         "intra_bandwidth": _NV_H100 + ": NVLink 900 GB/s (bidirectional)",
         "inter_bandwidth": "NVIDIA DGX H100 datasheet: 8 x 400 Gb/s NDR InfiniBand per node",
         "host_cpus": "NVIDIA DGX H100 datasheet: dual Intel Xeon Platinum 8480C, 112 cores total"},
        host_cpus=224,
        host_description="DGX H100: 2 x 56-core Xeon Platinum 8480C, 2 threads per core",
    ),
    "h100-pcie": Hardware(
        "h100-pcie", "NVIDIA H100 PCIe 80 GB, 8 per server over PCIe Gen5", "gpu",
        {"float32": 51 * TFLOPS, "tf32": 378 * TFLOPS, "bfloat16": 756 * TFLOPS,
         "float16": 756 * TFLOPS},
        80 * GB, 2000 * GB, 64 * GB, 400 * GB, 8,
        {"peak_flops": _NV_H100 + " (PCIe): FP32 51, TF32 756 / BF16 1,513 TFLOPS with "
                                  "sparsity, half that dense",
         "hbm": _NV_H100 + " (PCIe): 80 GB HBM2e, 2 TB/s",
         "intra_bandwidth": "PCI Express 5.0 x16: 128 GB/s bidirectional (64 per direction)",
         "inter_bandwidth": "ASSUMPTION: 8 x 400 Gb/s per server, as a DGX H100"},
    ),
    "h200": Hardware(
        "h200", "NVIDIA H200 SXM 141 GB, DGX H200 node", "gpu",
        {"float32": 67 * TFLOPS, "tf32": 494.7 * TFLOPS, "bfloat16": 989.4 * TFLOPS,
         "float16": 989.4 * TFLOPS},
        141 * GB, 4800 * GB, 450 * GB, 400 * GB, 8,
        {"peak_flops": "NVIDIA H200 Tensor Core GPU datasheet (2024, SXM): FP32 67, TF32 989 "
                       "/ BF16 1,979 TFLOPS with sparsity, half that dense",
         "hbm": "NVIDIA H200 datasheet: 141 GB HBM3e, 4.8 TB/s",
         "intra_bandwidth": "NVIDIA H200 datasheet: NVLink 900 GB/s (bidirectional)",
         "inter_bandwidth": "NVIDIA DGX H200 datasheet: 8 x 400 Gb/s InfiniBand per node",
         "host_cpus": "NVIDIA DGX H200 datasheet: dual Intel Xeon Platinum 8480C, 112 cores total"},
        host_cpus=224,
        host_description="DGX H200: 2 x 56-core Xeon Platinum 8480C, 2 threads per core",
    ),
    "b200": Hardware(
        "b200", "NVIDIA B200 180 GB, DGX B200 node", "gpu",
        {"float32": 75 * TFLOPS, "tf32": 1100 * TFLOPS, "bfloat16": 2250 * TFLOPS,
         "float16": 2250 * TFLOPS},
        180 * GB, 7700 * GB, 900 * GB, 400 * GB, 8,
        {"peak_flops": "NVIDIA HGX B200 / DGX B200 datasheets (2024), per GPU: FP32 75, "
                       "TF32 2.2 / BF16 4.5 PFLOPS with sparsity, half that dense",
         "hbm": "NVIDIA DGX B200 datasheet: 1,440 GB HBM3e for 8 GPUs (180 GB each); "
                "bandwidth 7.67 TB/s as in XLA's b200 target spec",
         "intra_bandwidth": "NVIDIA DGX B200 datasheet: NVLink 5, 1.8 TB/s per GPU "
                            "(bidirectional)",
         "inter_bandwidth": "NVIDIA DGX B200 datasheet: 8 x 400 Gb/s ConnectX-7 per node",
         "host_cpus": "NVIDIA DGX B200 datasheet: dual Intel Xeon Platinum 8570, 112 cores total"},
        host_cpus=224,
        host_description="DGX B200: 2 x 56-core Xeon Platinum 8570, 2 threads per core",
    ),
    "v3": Hardware(
        "v3", "Google TPU v3 chip (2 TensorCores)", "tpu",
        {"bfloat16": 123 * TFLOPS},
        32 * GiB, 900 * GB, 328 * GB, 0.0, 4,
        {"peak_flops": _GTPU.format(v="v3") + ": 123 TFLOPS per chip",
         "hbm": _GTPU.format(v="v3") + ": 32 GiB, 900 GB/s per chip",
         "intra_bandwidth": "ASSUMPTION (no vendor per-chip figure found): 328 GB/s, about "
                            "v4's per-chip all-reduce bandwidth x 1.2",
         "host_cpus": "Google Cloud TPU documentation, 'TPU v3': a v3-8 host has 96 vCPUs"},
        host_cpus=96, host_description="TPU v3 host VM: 96 vCPUs per 4 chips",
    ),
    "v4": Hardware(
        "v4", "Google TPU v4 chip (2 TensorCores, megacore)", "tpu",
        {"bfloat16": 275 * TFLOPS},
        32 * GiB, 1200 * GB, 268 * GB, 0.0, 4,
        {"peak_flops": _GTPU.format(v="v4") + ": 275 TFLOPS (bf16) per chip",
         "hbm": _GTPU.format(v="v4") + ": 32 GiB, 1,200 GBps",
         "intra_bandwidth": _GTPU.format(v="v4") + ": all-reduce bandwidth per pod 1.1 PB/s / "
                                                   "4,096 chips",
         "host_cpus": "Google Cloud TPU documentation, 'TPU v4': 240 vCPUs per host (4 chips)"},
        host_cpus=240, host_description="TPU v4 host VM: 240 vCPUs per 4 chips",
    ),
    "v5e": Hardware(
        "v5e", "Google TPU v5e chip (1 TensorCore)", "tpu",
        {"bfloat16": 197 * TFLOPS},
        16 * GB, 819 * GB, 200 * GB, 0.0, 8,
        {"peak_flops": _GTPU.format(v="v5e") + ": 197 TFLOPS (bf16) per chip",
         "hbm": _GTPU.format(v="v5e") + ": 16 GB, 819 GBps",
         "intra_bandwidth": _GTPU.format(v="v5e") + ": bidirectional ICI 400 GBps per chip "
                                                    "(all-reduce per pod 51.2 TB/s / 256 chips)",
         "host_cpus": "Google Cloud TPU documentation, 'TPU v5e': ct5lp-hightpu-8t, 224 vCPUs for "
                      "8 chips"},
        host_cpus=224, host_description="TPU v5e host VM (ct5lp-hightpu-8t): 224 vCPUs per 8 chips",
    ),
    "v5p": Hardware(
        "v5p", "Google TPU v5p chip (2 TensorCores, megacore)", "tpu",
        {"bfloat16": 459 * TFLOPS},
        95 * GiB, 2765 * GB, 600 * GB, 0.0, 4,
        {"peak_flops": _GTPU.format(v="v5p") + ": 459 TFLOPS (bf16) per chip",
         "hbm": _GTPU.format(v="v5p") + ": 95 GiB, 2,765 GBps",
         "intra_bandwidth": _GTPU.format(v="v5p") + ": bidirectional ICI 1,200 GBps per chip",
         "host_cpus": "Google Cloud TPU documentation, 'TPU v5p': 208 vCPUs per host (4 chips)"},
        host_cpus=208, host_description="TPU v5p host VM: 208 vCPUs per 4 chips",
    ),
}  # fmt: skip


def cpu_hardware(num_devices: int) -> Hardware:
    """This machine's CPU split into `num_devices` simulated devices (rough figures).

    Simulated devices share the host's cores, memory bandwidth and memory, so each gets
    1/num_devices of them; "communication" is memory copies. Peak assumes 32 float32 FLOPs
    per cycle per core (AVX2: two 8-wide FMA units) at 2.5 GHz; bandwidth 20 GB/s. Both are
    assumptions for `--measure` comparisons, not datasheet values.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        import psutil

        mem = float(psutil.virtual_memory().total)
    except ImportError:  # psutil is a dependency of our dependencies; be safe anyway
        mem = 16 * GB
    peak = cores * 2.5e9 * 32 / num_devices
    return Hardware(
        "cpu", f"host CPU ({cores} cores) as {num_devices} simulated devices", "cpu",
        {"float32": peak, "bfloat16": peak, "float16": peak},
        mem / num_devices, 20 * GB / num_devices, 10 * GB / num_devices, 0.0, num_devices,
        {"peak_flops": f"assumption: {cores} cores x 2.5 GHz x 32 FLOP/cycle, shared",
         "hbm": "host RAM (psutil), shared; bandwidth assumed 20 GB/s",
         "intra_bandwidth": "assumption: memory copies at 10 GB/s, shared"},
    )  # fmt: skip
