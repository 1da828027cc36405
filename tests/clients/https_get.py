"""GETs a URL over HTTPS, trusting the CA in --ca (and presenting --cert/--key when given), and
prints {"status": N, "body": "..."} as JSON, or {"error": "..."} when no answer came (e.g. the TLS
handshake was refused)."""

import argparse
import json
import ssl
import urllib.error
import urllib.request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True, help="PEM file of the CA that signed the server's certificate")
    parser.add_argument("--cert", help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--key", help="the client certificate's key (PEM)")
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=args.ca)
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    try:
        with urllib.request.urlopen(args.url, context=context, timeout=30) as response:
            print(json.dumps({"status": response.status, "body": response.read().decode()}))
    except urllib.error.HTTPError as e:
        print(json.dumps({"status": e.code, "body": e.read().decode()}))
    except (urllib.error.URLError, ssl.SSLError, ConnectionError) as e:
        print(json.dumps({"error": str(e)}))


if __name__ == "__main__":
    main()
