"""A local S3-compatible server for the shared-storage tests: moto's, on 127.0.0.1 and a free port,
with the buckets named on the command line created. Prints {"port": N} once it serves, and serves
until its standard input closes.

It answers one request at a time: moto checks a conditional write's precondition and then writes,
which only a server that runs one request at a time makes atomic, as S3's are."""

import json
import sys
import threading

import boto3
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


def main() -> None:
    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=False)
    port = server.server_address[1]
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    for bucket in sys.argv[1:]:
        s3.create_bucket(Bucket=bucket)
    print(json.dumps({"port": port}), flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
