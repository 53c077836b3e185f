"""DDS transport settings for MB-sized images and clouds (Fast DDS, the default RMW)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

#: Shared-memory segments of 32 MB instead of Fast DDS's 512 KB (see the file's comment).
LARGE_DATA_PROFILE = Path(__file__).resolve().parent.parent / 'fastdds_large_data.xml'
PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')


def large_data_environment(env: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """`env` (default os.environ) plus FASTDDS_DEFAULT_PROFILES_FILE = the shipped large-data
    profile, unless a profile file is already set there. Read when a process creates its DDS
    participant (rclpy.init), so apply it before that."""
    result = dict(os.environ if env is None else env)
    if not any(result.get(name) for name in PROFILE_VARIABLES):
        result[PROFILE_VARIABLES[0]] = str(LARGE_DATA_PROFILE)
    return result
