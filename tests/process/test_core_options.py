"""The core options are one list (CORE_FLAGS): the parser, the CoreConfig it makes and the tests'
flags for a config all come from it, so a config survives the trip through the command line."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from http_testkit import cli_flags

from service.core.config import CoreConfig, VersionPolicy
from service.process.core_options import CORE_FLAGS, add_core_options, core_config_from_args


def _parse(argv: list[str]) -> CoreConfig:
    parser = argparse.ArgumentParser()
    add_core_options(parser)
    return core_config_from_args(parser.parse_args(argv))


def test_a_config_survives_the_command_line(tmp_path: Path):
    config = CoreConfig(models_dir=tmp_path, default_model="digits",
                        version_policy=VersionPolicy(pinned=3), variant="digits=int8",
                        device="cpu", intra_op_threads=3, poll_interval_s=0.5,
                        max_batch_size=7, max_wait_ms=1.5, max_pending=9, decode_threads=5,
                        max_image_bytes=12345, max_pixels=678_900)
    assert _parse(cli_flags(config)) == config


def test_no_flag_means_the_config_default(tmp_path: Path):
    assert _parse(["--models-dir", str(tmp_path)]) == CoreConfig(models_dir=tmp_path)


def test_every_core_flag_sets_a_config_field_once():
    fields = {f.name for f in dataclasses.fields(CoreConfig)}
    names = [option.field for option in CORE_FLAGS]
    assert set(names) <= fields and len(names) == len(set(names))
    assert len({option.flag for option in CORE_FLAGS}) == len(CORE_FLAGS)
