"""Real public spatial datasets, bundled with sptl or downloaded into a cache."""

from ._breast_st import BREAST_ST_SLICES, breast_st
from ._cscc import cscc_st
from ._dlpfc import DLPFC_LAYERS, DLPFC_SAMPLES, dlpfc
from ._her2st import HER2ST_IMAGES, HER2ST_LABELLED, HER2ST_SECTIONS, her2st, her2st_bags
from ._merfish import MERFISH_SECTIONS, merfish_hypothalamus
from ._mob import MOB_SECTIONS, mouse_olfactory_bulb
from ._mouse_cortex import mouse_cortex_merfish, mouse_cortex_smfish
from ._synthetic import synthetic_tissue
from ._visium import PROSTATE_SAMPLES, visium_dentate_gyrus, visium_fixture, visium_prostate

__all__ = [
    "BREAST_ST_SLICES",
    "DLPFC_LAYERS",
    "DLPFC_SAMPLES",
    "HER2ST_IMAGES",
    "HER2ST_LABELLED",
    "HER2ST_SECTIONS",
    "MERFISH_SECTIONS",
    "MOB_SECTIONS",
    "PROSTATE_SAMPLES",
    "breast_st",
    "cscc_st",
    "dlpfc",
    "her2st",
    "her2st_bags",
    "merfish_hypothalamus",
    "mouse_cortex_merfish",
    "mouse_cortex_smfish",
    "mouse_olfactory_bulb",
    "synthetic_tissue",
    "visium_dentate_gyrus",
    "visium_fixture",
    "visium_prostate",
]
