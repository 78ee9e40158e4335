#!/usr/bin/env python3
"""Writes a one-layer OCI image archive that `ctr images import` takes, for the real node.

No registry is reachable here, so the real node's images are made from files on this
machine: the pause image from a static binary, a busybox image from busybox-static with a
link for each applet, the Python image from a tree of Debian's packages unpacked.

  oci-image.py OUT.tar NAME [--tree DIR] [--file SRC:DEST[:MODE] ...] [--link DEST:TARGET ...]
               [--dir DEST ...] [--entrypoint ARG ...] [--cmd ARG ...] [--env K=V ...]

--tree adds every file, directory and symbolic link under DIR as the image's root, with its
mode (hard links become copies).

The archive is reproducible: every entry has mtime 0 and root ownership.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile


def entry(name, kind=tarfile.REGTYPE, mode=0o755, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, linkname
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
    return info


def tree(tar, root, made):
    """Adds what is under root, sorted, as the layer's root."""
    for top, dirs, names in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(top, root)
        for name in sorted(dirs + names):
            path = os.path.join(top, name)
            dest = name if rel == "." else f"{rel}/{name}"
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                tar.addfile(entry(dest, tarfile.SYMTYPE, 0o777, linkname=os.readlink(path)))
            elif stat.S_ISDIR(st.st_mode):
                made.add(dest)
                tar.addfile(entry(dest, tarfile.DIRTYPE, mode))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    tar.addfile(entry(dest, mode=mode, size=st.st_size), f)


def layer(files, links, dirs, root=None):
    """The layer as an uncompressed tar, entries in a stable order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made = set()
        if root:
            tree(tar, root, made)

        def parents(path):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d and d not in made:
                    made.add(d)
                    tar.addfile(entry(d, tarfile.DIRTYPE))

        for d in sorted(dirs):
            parents(d + "/x")
        for src, dest, mode in sorted(files, key=lambda f: f[1]):
            parents(dest)
            data = open(src, "rb").read()
            tar.addfile(entry(dest, mode=mode, size=len(data)), io.BytesIO(data))
        for dest, target in sorted(links):
            parents(dest)
            tar.addfile(entry(dest, tarfile.SYMTYPE, 0o777, linkname=target))
    return buf.getvalue()


def blob(tar, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    tar.addfile(entry("blobs/sha256/" + digest[7:], mode=0o644, size=len(data)), io.BytesIO(data))
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("name", help="full reference, e.g. docker.io/library/busybox:1.35")
    p.add_argument("--tree")
    p.add_argument("--file", action="append", default=[])
    p.add_argument("--link", action="append", default=[])
    p.add_argument("--dir", action="append", default=[])
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--cmd", action="append", default=[])
    p.add_argument("--env", action="append", default=[])
    a = p.parse_args()

    files = []
    for f in a.file:
        src, dest, *mode = f.split(":")
        files.append((src, dest.lstrip("/"), int(mode[0], 8) if mode else 0o755))
    links = [tuple(part.lstrip("/") if i == 0 else part for i, part in enumerate(l.split(":", 1))) for l in a.link]
    dirs = [d.strip("/") for d in a.dir]

    raw = layer(files, links, dirs, a.tree)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as z:
        z.write(raw)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": a.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            **({"Entrypoint": a.entrypoint} if a.entrypoint else {}),
            **({"Cmd": a.cmd} if a.cmd else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created_by": "barge hack/cluster/oci-image.py"}],
    }
    with tarfile.open(a.out, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(entry("blobs", tarfile.DIRTYPE))
        tar.addfile(entry("blobs/sha256", tarfile.DIRTYPE))
        cfg = blob(tar, json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
        lay = blob(tar, gz.getvalue(), "application/vnd.oci.image.layer.v1.tar+gzip")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": cfg, "layers": [lay]}
        man = blob(tar, json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
        man["platform"] = {"architecture": "amd64", "os": "linux"}
        man["annotations"] = {"io.containerd.image.name": a.name,
                              "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1]}
        index = json.dumps({"schemaVersion": 2, "manifests": [man]}, sort_keys=True).encode()
        tar.addfile(entry("index.json", mode=0o644, size=len(index)), io.BytesIO(index))
        layout = b'{"imageLayoutVersion":"1.0.0"}'
        tar.addfile(entry("oci-layout", mode=0o644, size=len(layout)), io.BytesIO(layout))


if __name__ == "__main__":
    main()
