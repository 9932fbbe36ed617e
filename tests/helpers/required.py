"""What CI requires instead of letting a test skip it (a small file system to fill, a Slurm cluster)."""
import os

REQUIRE_SMALL_DISK = "SSL_SCRIPTS_REQUIRE_SMALL_DISK"  # set by .ci/run: no tmpfs is then a failure, not a skip


def required_by(variable: str) -> bool:
    """Whether an environment variable such as SSL_SCRIPTS_REQUIRE_SMALL_DISK asks for something: unset, empty,
    "0", "false", "no" and "off" (any case, spaces around) do not; any other value does."""
    return os.environ.get(variable, "").strip().lower() not in ("", "0", "false", "no", "off")
