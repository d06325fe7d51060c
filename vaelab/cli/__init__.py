"""The ``vaelab`` command line: ``main`` assembles the parser from one module per command (or
small group of commands), each holding its flags beside its handler; ``common`` holds what they
share."""

from .common import AIS_DEFAULTS, EXIT_USAGE, GMM_EXAMPLES  # noqa: F401
from .compare import cmd_compare  # noqa: F401
from .diagnose import cmd_diagnose  # noqa: F401
from .evaluate import METHODS, cmd_evaluate  # noqa: F401
from .gaps import cmd_gaps  # noqa: F401
from .prior import cmd_prior  # noqa: F401
from .quality import cmd_quality  # noqa: F401
from .report import cmd_report  # noqa: F401
from .sample import cmd_reconstruct, cmd_sample  # noqa: F401
from .scores import cmd_decode, cmd_encode, cmd_score  # noqa: F401
from .train import cmd_train  # noqa: F401
from .traverse import cmd_interpolate, cmd_traverse  # noqa: F401
from .main import COMMANDS, DEVICE_COMMANDS, EXIT_BROKEN_PIPE, main  # noqa: F401  (last: `main` the function)
