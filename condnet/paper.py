"""The paper's facts, as printed, in one place: its networks, its recipe's constants and the
figures that reports and benchmarks compare with (Tables 1, 3 and 4).

The recipe's settings (epochs, batch, learning rates, sizes) are the defaults of
`condnet.config`; this module holds what the paper prints and the code does not compute.
"""

# The paper's three networks: Table 1 built from blocks A, B and C (Figure 2), by preset name
# and block kind, in the order of the paper's tables.
NETWORKS = {"paper-standard": "standard", "paper-se": "se", "paper-condconv": "condconv"}

# Table 1 as (output channels, repeats, stride of the first block) per stage.
TABLE1_STAGES = ((16, 1, 1), (24, 2, 1), (40, 3, 2), (80, 4, 2), (160, 5, 2), (320, 1, 1))

# Input normalisation of the recipe: ImageNet's per-channel mean and standard deviation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ImageNet-100: training and validation images.
TRAIN_IMAGES, VAL_IMAGES = 128_000, 5_000

# Table 3: training time in hours and top-1 in percent (None: not reported; the paper calls
# block C "optional").
TABLE3 = {
    "paper-standard": {"hours": 5.0, "top1": 72.26},
    "paper-se": {"hours": 4.0, "top1": 74.04},
    "paper-condconv": None,
}

# Table 4 describes this network at this input size.
TABLE4_NETWORK, TABLE4_RESOLUTION = "paper-standard", 56
# Table 4 as printed: (MACs, "Filter Cx") for its 13 rows, and its two totals.
TABLE4_PRINTED_ROWS = (
    (1354752, 432),
    (8228864, 2624),
    (9834496, 3136),
    (17160192, 7008),
    (10913280, 5472),
    (22328320, 7008),
    (7808640, 28480),
    (31799040, 20640),
    (7667520, 162240),
    (41269760, 79680),
    (15335040, 842240),
    (20070400, 312960),
    (0, 409600),
)
TABLE4_PRINTED_TOTAL = (193770304, 1874512)
