#!/usr/bin/env python3
"""Arranges and inspects an Azurite (Azure Blob Storage emulator) account for the tests, through
Microsoft's azure-storage-blob client.

Usage: azure_blobs.py ENDPOINT create CONTAINER | list CONTAINER | get CONTAINER BLOB
ENDPOINT is Azurite's blob URL (http://127.0.0.1:PORT); the account is Azurite's well-known
development account. `list` prints one blob name per line; `get` writes the blob's bytes to stdout.
"""
import sys

from azure.storage.blob import BlobServiceClient

# Azurite's documented development account (public, emulator-only).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

endpoint, command, container = sys.argv[1], sys.argv[2], sys.argv[3]
service = BlobServiceClient(f"{endpoint}/{ACCOUNT}", credential={"account_name": ACCOUNT, "account_key": KEY})
if command == "create":
    service.create_container(container)
elif command == "list":
    for blob in service.get_container_client(container).list_blobs():
        print(blob.name)
elif command == "get":
    sys.stdout.buffer.write(service.get_blob_client(container, sys.argv[4]).download_blob().readall())
else:
    sys.exit(f"unknown command {command}")
