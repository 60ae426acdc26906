"""Datasets under the evaluation protocol: :class:`Dataset` and the sha1 split
(:mod:`.dataset`), one loader per format (:mod:`.homedepot`, :mod:`.tsv`, :mod:`.beir`,
:mod:`.esci`, :mod:`.wands`, :mod:`.multicpr`) chosen by :func:`load_dataset`, extra
train pairs (:mod:`.extra_pairs`) and the generated :func:`synthetic_dataset`."""

from .beir import load_beir
from .dataset import (BUCKETS, DEFAULT_THRESHOLD, SPLITS, Dataset, DataError, protocol_split,
                      query_id, terms)
from .esci import ESCI_EXAMPLES, ESCI_GRADES, ESCI_PRODUCTS, load_esci
from .extra_pairs import with_extra_pairs
from .homedepot import load_homedepot
from .load import default_data_path, load_dataset
from .multicpr import load_multicpr
from .synthetic import synthetic_dataset
from .tsv import load_tsv_dir
from .wands import WANDS_GRADES, load_wands

__all__ = ["BUCKETS", "DEFAULT_THRESHOLD", "ESCI_EXAMPLES", "ESCI_GRADES", "ESCI_PRODUCTS",
           "SPLITS", "WANDS_GRADES", "DataError", "Dataset", "default_data_path", "load_beir",
           "load_dataset", "load_esci", "load_homedepot", "load_multicpr", "load_tsv_dir",
           "load_wands", "protocol_split", "query_id", "synthetic_dataset", "terms",
           "with_extra_pairs"]
