"""One endpoint in front of Barge and moto, for moto's own Batch tests in server mode.

moto's server mode points every client of a test at one URL. This router sends each request
on by the service it was signed for: `batch` to Barge's AWS Batch API, signed again with a key
Barge issued (the tests sign with moto's fake key); everything else (IAM, EC2, ECS, logs, and
moto's `/moto-api/reset`) to moto unchanged. Signing uses botocore's SigV4 signer.

    python moto_router.py PORT BARGE_URL MOTO_URL DEFAULT_REGION ACCESS_KEY_ID SECRET
"""

import re
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

PORT, BARGE, MOTO, REGION, KEY_ID, SECRET = sys.argv[1:7]
CREDENTIALS = Credentials(KEY_ID, SECRET)
SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")
# Hop-by-hop headers, which the pool sets itself, and those the signer computes again.
HOP = {"host", "content-length", "connection", "transfer-encoding"}
SIGNED = HOP | {"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"}
# Set by this server's own send_response.
OWN = {"server", "date"}
pool = urllib3.PoolManager(maxsize=16, retries=False)


class Router(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def route(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        match = SCOPE.search(self.headers.get("Authorization", ""))
        if match and match.group(2) == "batch":
            url = BARGE + self.path
            headers = {k: v for k, v in self.headers.items() if k.lower() not in SIGNED}
            request = AWSRequest(method=self.command, url=url, data=body, headers=headers)
            # Signed for the region the test asked for, as its client did.
            SigV4Auth(CREDENTIALS, "batch", match.group(1) or REGION).add_auth(request)
            headers = dict(request.headers.items())
            headers["Host"] = urllib.parse.urlsplit(BARGE).netloc
        else:
            # moto tells the service and region from the signature's scope: keep it.
            url = MOTO + self.path
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        answer = pool.request(self.command, url, body=body or None, headers=headers,
                              redirect=False, preload_content=True)
        self.send_response(answer.status)
        for key, value in answer.headers.items():
            if key.lower() not in HOP | OWN:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.data)))
        self.end_headers()
        self.wfile.write(answer.data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = route

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(PORT)), Router).serve_forever()
