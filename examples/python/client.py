#!/usr/bin/env python3
"""A Python client of both services, generated from proto/ with grpcio-tools at start.

Calls every RPC of documents.v1.DocumentProvider and consumer.v1.Consumer once, reads the
google.rpc error details (BadRequest, ErrorInfo, RetryInfo) with grpcio-status, and checks what
it gets; exits non-zero if anything differs from the contract.

    pip install grpcio grpcio-tools grpcio-status
    python examples/python/client.py --provider 127.0.0.1:50051 --consumer 127.0.0.1:50052

Add --token when the provider requires a bearer token.
"""

import argparse
import importlib
import json
import pathlib
import sys
import tempfile

import grpc
from grpc_status import rpc_status
from grpc_tools import protoc
from google.rpc import error_details_pb2

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTOS = ["documents/v1/documents.proto", "consumer/v1/consumer.proto"]


def generate():
    """Generates the client code from proto/ into a temporary folder and imports it.
    google/rpc/status.proto comes from googleapis-common-protos (a grpcio-status dependency)."""
    out = tempfile.mkdtemp(prefix="documents-client-")
    proto = ROOT / "proto"
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{proto}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + [str(proto / p) for p in PROTOS]) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    return {
        name: importlib.import_module(name)
        for name in [
            "documents.v1.documents_pb2",
            "documents.v1.documents_pb2_grpc",
            "consumer.v1.consumer_pb2",
            "consumer.v1.consumer_pb2_grpc",
        ]
    }


def details(status):
    """The typed details of a google.rpc.Status, by kind."""
    found = {}
    for any_detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                found[kind.__name__] = message
    return found


def check(condition, what):
    if not condition:
        sys.exit(f"contract broken: {what}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--provider", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--token")
    args = parser.parse_args()
    m = generate()
    docs, docs_grpc = m["documents.v1.documents_pb2"], m["documents.v1.documents_pb2_grpc"]
    cons, cons_grpc = m["consumer.v1.consumer_pb2"], m["consumer.v1.consumer_pb2_grpc"]
    metadata = [("x-request-id", "python-example")]
    if args.token:
        metadata.append(("authorization", f"Bearer {args.token}"))
    provider = docs_grpc.DocumentProviderStub(grpc.insecure_channel(args.provider))
    consumer = cons_grpc.ConsumerStub(grpc.insecure_channel(args.consumer))
    seen = {}

    # GetDocument, gzip-compressed both ways.
    one = provider.GetDocument(
        docs.GetDocumentRequest(identifier="ASX:GNP"), metadata=metadata, compression=grpc.Compression.Gzip
    )
    check(one.document_id and one.source_id == "ASX:GNP:announcement", f"GetDocument: {one}")
    seen["GetDocument"] = docs.Outcome.Name(one.outcome)

    # A failed call: the status's details name the field and the reason.
    try:
        provider.GetDocument(docs.GetDocumentRequest(identifier="ASX..GNP"), metadata=metadata)
        check(False, "ASX..GNP was accepted")
    except grpc.RpcError as call:
        check(call.code() == grpc.StatusCode.INVALID_ARGUMENT, f"code {call.code()}")
        found = details(rpc_status.from_call(call))
        check(found["BadRequest"].field_violations[0].field == "identifier", f"BadRequest: {found}")
        check(found["ErrorInfo"].reason == "INVALID_IDENTIFIER", f"ErrorInfo: {found}")
        seen["GetDocument error"] = found["ErrorInfo"].reason

    # An unknown company: NOT_FOUND from the upstream, ErrorInfo says so.
    try:
        provider.GetDocument(docs.GetDocumentRequest(identifier="ASX:ZZZZ"), metadata=metadata)
        check(False, "ASX:ZZZZ was found")
    except grpc.RpcError as call:
        check(call.code() == grpc.StatusCode.NOT_FOUND, f"code {call.code()}")
        info = details(rpc_status.from_call(call))["ErrorInfo"]
        check(info.reason == "UPSTREAM_NOT_FOUND" and info.metadata["identifier"] == "ASX:ZZZZ", f"{info}")

    # GetDocuments: one result per identifier; the bad one carries a google.rpc.Status.
    batch = provider.GetDocuments(
        docs.GetDocumentsRequest(identifiers=["ASX:GNP", "ASX..GNP"]), metadata=metadata
    )
    check(len(batch.results) == 2 and not batch.results[0].HasField("status"), f"{batch}")
    bad = details(batch.results[1].status)
    check(bad["BadRequest"].field_violations[0].field == "identifiers[1]", f"{bad}")
    seen["GetDocuments"] = [docs.Outcome.Name(r.outcome) for r in batch.results]

    # EnsureDocuments (legacy): IDs of the good ones, statuses of the bad ones.
    ensured = provider.EnsureDocuments(
        docs.EnsureDocumentsRequest(identifiers=["ASX:GNP", "bad!"]), metadata=metadata
    )
    check("ASX:GNP" in ensured.document_ids, f"{ensured}")
    check(details(ensured.error_statuses["bad!"])["ErrorInfo"].reason == "INVALID_IDENTIFIER", f"{ensured}")
    seen["EnsureDocuments"] = sorted(ensured.document_ids)

    # StreamDocuments: every identifier once, each with its index.
    streamed = list(
        provider.StreamDocuments(docs.GetDocumentsRequest(identifiers=["ASX:GNP", "ASX:BHP"]), metadata=metadata)
    )
    check(sorted(r.index for r in streamed) == [0, 1], f"{streamed}")
    seen["StreamDocuments"] = len(streamed)

    # WatchDocuments: the current state first (send_initial), then a forced refresh arrives as
    # EVENT_TYPE_REFRESHED with the next version. A watch has no end of its own: this one has
    # a deadline, and a real watcher resumes with `since` (the positions it last saw).
    watch = provider.WatchDocuments(
        docs.WatchDocumentsRequest(identifiers=["ASX:GNP"], send_initial=True), metadata=metadata, timeout=30
    )
    events = (e for e in watch if e.type != docs.EVENT_TYPE_HEARTBEAT)
    current = next(events)
    check(current.type == docs.EVENT_TYPE_CURRENT and current.document_id == one.document_id, f"{current}")
    refreshed = provider.GetDocument(
        docs.GetDocumentRequest(identifier="ASX:GNP", options=docs.DocumentOptions(force_refresh=True)),
        metadata=metadata,
    )
    changed = next(events)
    check(changed.type == docs.EVENT_TYPE_REFRESHED and changed.version == refreshed.version, f"{changed}")
    watch.cancel()
    seen["WatchDocuments"] = [docs.EventType.Name(e.type) for e in (current, changed)]

    # The consumer: one round, then what it stored.
    report = consumer.ProcessTickers(
        cons.ProcessTickersRequest(tickers=["ASX:GNP"]), compression=grpc.Compression.Gzip
    ).reports[0]
    check(not report.HasField("status") and report.document_id == one.document_id, f"{report}")
    seen["ProcessTickers"] = len(report.downloaded) + len(report.skipped)
    stored = consumer.GetStored(cons.GetStoredRequest(ticker="asx:gnp"))
    check(stored.ticker == "ASX:GNP" and stored.announcements.document_id == one.document_id, f"{stored}")
    seen["GetStored"] = len(stored.attachment_hashes)

    print(json.dumps(seen))
    print("all RPCs answered as the contract says")


if __name__ == "__main__":
    main()
