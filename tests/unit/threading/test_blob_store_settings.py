"""Choosing the blob store: the folder by default, S3 only with a bucket (a missing one is named)."""

from __future__ import annotations

import pytest

from services.runtime.settings import ConfigurationError
from services.threading.blob_store_s3 import S3BlobStore
from services.threading.blobs import FolderBlobStore, open_blob_store
from services.threading.settings import ThreadingSettings


def test_the_folder_is_the_embedded_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_blob_store(ThreadingSettings.load(data_dir=tmp_path))
    assert isinstance(store, FolderBlobStore)


def test_s3_needs_a_bucket_and_says_which_variable() -> None:
    with pytest.raises(ConfigurationError, match="MAILSYNC_THREADING_BLOB_S3_BUCKET"):
        ThreadingSettings.load(blob_store="s3")
    # Negative control: with a bucket the same choice loads, and builds the S3 store without connecting.
    settings = ThreadingSettings.load(
        blob_store="s3", blob_s3_bucket="mailsync-blobs", blob_s3_endpoint_url="http://127.0.0.1:9"
    )
    assert isinstance(open_blob_store(settings), S3BlobStore)
