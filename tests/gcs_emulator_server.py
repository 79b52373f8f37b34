"""``gcp-storage-emulator`` with two behaviours of real GCS that it lacks and that our clients rely on:

- object downloads carry ``x-goog-generation`` / ``x-goog-metageneration`` headers: TensorStore reads an object's
  generation from them for its conditional writes (Orbax's OCDBT manifests); without them it reports "Malformed
  StorageGeneration";
- uploads honour the ``ifGenerationMatch`` precondition (0: only if the object does not exist; N: only if its
  current generation is N) with 412 Precondition Failed: the workdir lock and config record are created with it.

Run as ``python tests/gcs_emulator_server.py start --host 127.0.0.1 --port N --in-memory --default-bucket B`` (the
emulator's own arguments); tests/gcs_emulator.py does.
"""
import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download, _insert = objects.download, objects.insert


def _object(storage, bucket: str, name: str):
    try:
        return storage.get_file_obj(bucket, name)
    except NotFound:
        return None


def _upload_name(request):
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        return (data.get("meta") or {}).get("name") or data.get("name")
    return None


def download(request, response, storage, *args, **kwargs):
    obj = _object(storage, request.params["bucket_name"], request.params["object_id"])
    if obj is not None:
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    return _download(request, response, storage, *args, **kwargs)


def insert(request, response, storage, *args, **kwargs):
    wanted = request.query.get("ifGenerationMatch")
    name = _upload_name(request)
    if wanted and name and "upload_id" not in request.query:
        obj = _object(storage, request.params["bucket_name"], name)
        current = "0" if obj is None else str(obj["generation"])
        if current != wanted[0]:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you specified "
                                                              "did not hold.", "errors": []}})
            return None
    return _insert(request, response, storage, *args, **kwargs)


objects.download, objects.insert = download, insert  # before the server module builds its routing table

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    sys.exit(main(sys.argv[1:]))
