#!/usr/bin/env python3
"""Drives the dev agent with py-consul, an independent Consul client: if the stand-in answers
differently from Consul, this client's decoding or assertions fail.

Usage: py-consul-check.py PORT ROOT_TOKEN AUTH_METHOD JWT
Prints one "ok ..." line per check; exits non-zero on the first failure."""
import sys
import threading
import time

import consul

port, root, method, jwt = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
c = consul.Consul(host="127.0.0.1", port=port, token=root)


def ok(what):
    print("ok", what, flush=True)


# Registration with a sidecar, as `consul services register` would send it.
c.agent.service.register("storage", service_id="storage-1", port=8080, address="127.0.0.1",
                         connect={"SidecarService": {"Port": 21000}})
services = c.agent.services()
assert services["storage-1-sidecar-proxy"]["Kind"] == "connect-proxy", services
assert services["storage-1-sidecar-proxy"]["Proxy"]["DestinationServiceID"] == "storage-1"
ok("register: the sidecar registration is derived (connect-proxy for storage-1)")

roots = c.connect.ca.roots()
assert roots["Roots"] and roots["ActiveRootID"] and roots["TrustDomain"].endswith(".consul"), roots
leaf = c.agent.connect.ca.leaf("storage")
assert leaf["ServiceURI"].endswith("/svc/storage") and "BEGIN CERTIFICATE" in leaf["CertPEM"], leaf
ok("CA: roots and the storage leaf")

index, nodes = c.health.connect("storage", passing=True)
assert len(nodes) == 1 and nodes[0]["Service"]["Port"] == 21000, nodes
answered = {}


def blocking():
    answered["result"] = c.health.connect("storage", index=index, wait="20s")


thread = threading.Thread(target=blocking)
started = time.time()
thread.start()
time.sleep(0.5)
c.agent.service.register("storage", service_id="storage-2", port=8081, address="127.0.0.1",
                         connect={"SidecarService": {"Port": 21001}})
thread.join(30)
new_index, new_nodes = answered["result"]
assert int(new_index) > int(index) and len(new_nodes) == 2, (index, new_index, new_nodes)
assert time.time() - started < 15, "the blocking query returned on the change, not at its wait"
ok("health: a blocking query returns on the registration with a higher index")

c.config.set("service-intentions", "storage",
             {"Sources": [{"Name": "backup-agent", "Action": "allow"}]})
entry = c.config.get("service-intentions", "storage")
assert entry["Sources"][0]["Name"] == "backup-agent", entry
matched = c.connect.intentions.match("destination", "storage")
assert matched["storage"][0]["SourceName"] == "backup-agent", matched
ok("config entries and intention match")

login = c.acl.login(method, jwt)
secret = login["SecretID"]
as_service = consul.Consul(host="127.0.0.1", port=port, token=secret)
assert as_service.agent.connect.ca.leaf("backup-agent")["Service"] == "backup-agent"
try:
    as_service.agent.self()
    raise AssertionError("a service identity read /v1/agent/self")
except consul.ACLPermissionDenied:
    pass
try:
    as_service.agent.connect.ca.leaf("storage")
    raise AssertionError("a service identity got another service's leaf")
except consul.ACLPermissionDenied:
    pass
ok("ACL login: a service identity reads its own leaf, not agent/self or another leaf")
assert c.acl.logout(secret)
try:
    as_service.agent.services()
    raise AssertionError("a logged-out token still works")
except consul.ACLPermissionDenied:
    pass
ok("ACL logout: the token is gone")
