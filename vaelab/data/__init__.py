"""Data: named datasets and their splits, the IDX reader and downloads, arrays, image folders,
generated 2-D mixtures; in-memory and streamed batching."""

from .common import BINARIZE_MODES, CODE_MODES, DATASETS, SPLITS  # noqa: F401
from .download import (  # noqa: F401
    APT_PACKAGES,
    DOWNLOAD_TIMEOUT,
    IDX_FILES,
    MD5,
    MIRRORS,
    SYSTEM_DIRS,
    resolve_idx_files,
)
from .idx import read_idx  # noqa: F401
from .load import load_dataset, load_split  # noqa: F401
from .mixtures import MIXTURE_SIZES, MIXTURES, STACKED_SIZES, STACKED_SOURCE  # noqa: F401
from .sources import (  # noqa: F401
    BUILT_IN,
    DIGITS_TRAIN_SIZE,
    IDX_SOURCES,
    check_data_dir,
    describe_source,
    is_folder,
    is_path,
    uses_data_dir,
)
from .splits import Split  # noqa: F401
