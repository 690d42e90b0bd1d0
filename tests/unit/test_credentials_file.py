"""Signed assertion file source: re-read on change, including the kubelet's ..data symlink swap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_token_broker.credentials import CredentialError, SignedAssertionFileSource


def replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_returns_stripped_content_and_rereads_after_rotation(tmp_path: Path) -> None:
    token = tmp_path / "azure-identity-token"
    token.write_text("eyJ.first.sig\n")
    source = SignedAssertionFileSource(0, str(token))
    credential = source.client_credential()
    assertion = credential["client_assertion"]
    assert assertion() == "eyJ.first.sig"
    replace(token, "eyJ.second.sig")
    assert assertion() == "eyJ.second.sig"
    version = source.version()
    replace(token, "  eyJ.third.sig  \n")
    assert source.client_credential()["client_assertion"]() == "eyJ.third.sig"
    assert source.version() == version  # the callable re-reads by itself


def test_kubelet_atomic_writer_symlink_swap(tmp_path: Path) -> None:
    # Layout of a projected volume: token -> ..data/token, ..data -> ..<timestamp>/
    first = tmp_path / "..2026_11_27_12_00_00.1"
    first.mkdir()
    (first / "token").write_text("eyJ.gen1.sig")
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "token").symlink_to("..data/token")
    source = SignedAssertionFileSource(0, str(tmp_path / "token"))
    assertion = source.client_credential()["client_assertion"]
    assert assertion() == "eyJ.gen1.sig"

    # Rotation: new directory, new ..data_tmp symlink renamed over ..data, old directory removed.
    second = tmp_path / "..2026_11_27_13_00_00.2"
    second.mkdir()
    (second / "token").write_text("eyJ.gen2.sig")  # same size as before
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
    (first / "token").unlink()
    first.rmdir()
    assert assertion() == "eyJ.gen2.sig"


def test_missing_or_empty_file_raises(tmp_path: Path) -> None:
    token = tmp_path / "token"
    source = SignedAssertionFileSource(2, str(token))
    with pytest.raises(CredentialError, match="not found") as missing:
        source.client_credential()
    assert missing.value.transient is True
    token.write_text("  \n")
    with pytest.raises(CredentialError, match="is empty"):
        source.client_credential()
    token.write_text("eyJ.ok.sig")
    assertion = source.client_credential()["client_assertion"]
    assert assertion() == "eyJ.ok.sig"
    token.unlink()
    with pytest.raises(CredentialError, match="not found"):
        assertion()
    assert source.describe() == f"SignedAssertionFilePath {token}"
