import Foundation
import Testing
@testable import SidecarModel

// Response bodies below follow Consul's API docs and the Go structs they are serialized from
// (agent/structs/connect_ca.go, api/agent.go, api/health.go, agent/structs/intention.go).
// PEM contents are placeholders: these tests cover decoding only.

private let oldRootPEM = "-----BEGIN CERTIFICATE-----\nOLD-ROOT-PLACEHOLDER\n-----END CERTIFICATE-----\n"
private let newRootPEM = "-----BEGIN CERTIFICATE-----\nNEW-ROOT-PLACEHOLDER\n-----END CERTIFICATE-----\n"
private let crossSignedPEM = "-----BEGIN CERTIFICATE-----\nNEW-ROOT-KEY-CROSS-SIGNED-BY-OLD-ROOT\n-----END CERTIFICATE-----\n"

private let rootsSource = "GET /v1/agent/connect/ca/roots"
private let leafSource = "GET /v1/agent/connect/ca/leaf/storage"
private let serviceSource = "GET /v1/agent/service/storage-sidecar-proxy"
private let healthSource = "GET /v1/health/connect/storage?passing=1"
private let matchSource = "GET /v1/connect/intentions/match?by=destination&name=storage"
private let selfSource = "GET /v1/agent/self"

/// The error a decode throws, or nil when it succeeds or throws something else.
private func configError(_ body: () throws -> Any) -> ConfigError? {
    do {
        _ = try body()
        return nil
    } catch let error as ConfigError {
        return error
    } catch {
        return nil
    }
}

private func data(_ text: String) -> Data { Data(text.utf8) }

// MARK: - Fixtures

/// Mid-rotation: the old root is inactive but still listed, the new root carries a certificate
/// for its key cross-signed by the old root.
private let rotationRoots = #"""
{
  "ActiveRootID": "5e:7c:91:0a:3b:c4:1d:22:8f:60:aa:17:e9:43:0b:6d:c2:58:f1:9e",
  "TrustDomain": "7e567ac2-551d-463f-8497-f78972856fc1.consul",
  "Roots": [
    {
      "ID": "15:bf:3a:7d:ff:ea:c1:8c:46:67:6c:db:b8:81:18:36:ad:e5:d0:c7",
      "Name": "Consul CA Primary Cert",
      "SerialNumber": 7,
      "SigningKeyID": "1f:91:ca:41:8f:ac:67:bf:59:c2:fa:4e:75:5c:d8:f0:55:de:be:75",
      "ExternalTrustDomain": "7e567ac2-551d-463f-8497-f78972856fc1",
      "NotBefore": "2024-01-10T09:00:00Z",
      "NotAfter": "2034-01-07T09:00:00Z",
      "RootCert": "-----BEGIN CERTIFICATE-----\nOLD-ROOT-PLACEHOLDER\n-----END CERTIFICATE-----\n",
      "IntermediateCerts": null,
      "Active": false,
      "PrivateKeyType": "ec",
      "PrivateKeyBits": 256,
      "CreateIndex": 8,
      "ModifyIndex": 1204
    },
    {
      "ID": "5e:7c:91:0a:3b:c4:1d:22:8f:60:aa:17:e9:43:0b:6d:c2:58:f1:9e",
      "Name": "Consul CA Primary Cert",
      "SerialNumber": 12,
      "SigningKeyID": "8a:02:4c:77:13:de:90:5b:c1:3e:48:f2:06:99:aa:21:5d:e0:b4:3c",
      "ExternalTrustDomain": "7e567ac2-551d-463f-8497-f78972856fc1",
      "NotBefore": "2025-03-02T11:30:00Z",
      "NotAfter": "2035-02-28T11:30:00Z",
      "RootCert": "-----BEGIN CERTIFICATE-----\nNEW-ROOT-PLACEHOLDER\n-----END CERTIFICATE-----\n",
      "IntermediateCerts": [
        "-----BEGIN CERTIFICATE-----\nNEW-ROOT-KEY-CROSS-SIGNED-BY-OLD-ROOT\n-----END CERTIFICATE-----\n"
      ],
      "Active": true,
      "PrivateKeyType": "ec",
      "PrivateKeyBits": 256,
      "CreateIndex": 1204,
      "ModifyIndex": 1204
    }
  ]
}
"""#

private func singleRoot(_ rootFields: String, top: String = "") -> String {
    #"{"ActiveRootID": "aa", "TrustDomain": "11111111-2222-3333-4444-555555555555.consul", "#
        + top + #""Roots": [{"# + rootFields + "}]}"
}

private let plainRootFields = #""ID": "aa", "Name": "Consul CA Root Cert", "SerialNumber": 7, "RootCert": "-----BEGIN CERTIFICATE-----\nR\n-----END CERTIFICATE-----\n", "Active": true"#

private let leafResponse = #"""
{
  "SerialNumber": "3a:5f:07:c9",
  "CertPEM": "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nINTERMEDIATE\n-----END CERTIFICATE-----\n",
  "PrivateKeyPEM": "-----BEGIN EC PRIVATE KEY-----\nSECRET-KEY-MATERIAL\n-----END EC PRIVATE KEY-----\n",
  "Service": "storage",
  "ServiceURI": "spiffe://7e567ac2-551d-463f-8497-f78972856fc1.consul/ns/default/dc/dc1/svc/storage",
  "ValidAfter": "2025-03-02T11:31:05Z",
  "ValidBefore": "2025-03-05T11:31:05Z",
  "Namespace": "default",
  "CreateIndex": 1290,
  "ModifyIndex": 1290
}
"""#

private func leaf(removing field: String? = nil, replacing replacement: (String, String)? = nil) -> String {
    var lines = leafResponse.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    if let field { lines.removeAll { $0.contains("\"\(field)\":") } }
    if let (field, value) = replacement {
        lines = lines.map { line in
            guard line.contains("\"\(field)\":") else { return line }
            return "  \"\(field)\": \(value)" + (line.hasSuffix(",") ? "," : "")
        }
    }
    return lines.joined(separator: "\n")
}

/// The sidecar registration as the agent answers it (shape of the docs' sample response).
private func agentService(upstreams: String = #"""
    [
      {"DestinationType": "service", "DestinationName": "metadata-db", "Datacenter": "", "LocalBindPort": 9191,
       "Config": {"connect_timeout_ms": 2500}, "MeshGateway": {}},
      {"DestinationType": "service", "DestinationName": "object-store", "DestinationNamespace": "backups",
       "LocalBindAddress": "127.0.0.2", "LocalBindPort": 9192, "MeshGateway": {}}
    ]
    """#, kind: String = #""Kind": "connect-proxy","#, service: String = #""Service": "storage-sidecar-proxy","#,
    proxyExtra: String = "", top: String = "") -> String {
    #"""
    {
      \#(kind)
      "ID": "storage-sidecar-proxy",
      \#(service)
      "Tags": null,
      "Meta": null,
      "Namespace": "default",
      "Port": 21000,
      "Address": "",
      \#(top)
      "TaggedAddresses": {
        "lan_ipv4": {"Address": "10.0.4.17", "Port": 21000},
        "wan_ipv4": {"Address": "10.0.4.17", "Port": 21000}
      },
      "Weights": {"Passing": 1, "Warning": 1},
      "EnableTagOverride": false,
      "Datacenter": "dc1",
      "ContentHash": "4ecd29c7bc647ca8",
      "Proxy": {
        "DestinationServiceName": "storage",
        "DestinationServiceID": "storage",
        "LocalServiceAddress": "127.0.0.1",
        "LocalServicePort": 8080,
        "Mode": "",
        "Config": {"protocol": "http", "bind_port": 21001},
        \#(proxyExtra)
        "MeshGateway": {},
        "Expose": {},
        "Upstreams": \#(upstreams)
      }
    }
    """#
}

/// Two sidecars for "storage": one registered without an address (dial the node), one with a
/// failing check.
private let healthResponse = #"""
[
  {
    "Node": {
      "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
      "Node": "backup-node-a",
      "Address": "10.0.4.21",
      "Datacenter": "dc1",
      "TaggedAddresses": {"lan": "10.0.4.21", "wan": "10.0.4.21"},
      "Meta": {"consul-network-segment": ""},
      "CreateIndex": 12,
      "ModifyIndex": 40
    },
    "Service": {
      "Kind": "connect-proxy",
      "ID": "storage-sidecar-proxy",
      "Service": "storage-sidecar-proxy",
      "Tags": [],
      "Address": "",
      "Meta": null,
      "Port": 21000,
      "Weights": {"Passing": 1, "Warning": 1},
      "EnableTagOverride": false,
      "Proxy": {
        "DestinationServiceName": "storage",
        "DestinationServiceID": "storage",
        "LocalServiceAddress": "127.0.0.1",
        "LocalServicePort": 8080,
        "MeshGateway": {},
        "Expose": {}
      },
      "Connect": {},
      "CreateIndex": 51,
      "ModifyIndex": 51
    },
    "Checks": [
      {"Node": "backup-node-a", "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
       "Notes": "", "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": "", "ServiceTags": [],
       "Type": "", "Definition": {}, "CreateIndex": 12, "ModifyIndex": 12},
      {"Node": "backup-node-a", "CheckID": "service:storage-sidecar-proxy:1", "Name": "Connect Sidecar Listening",
       "Status": "passing", "Output": "TCP connect 127.0.0.1:21000: Success", "ServiceID": "storage-sidecar-proxy",
       "ServiceName": "storage-sidecar-proxy", "Type": "tcp", "CreateIndex": 52, "ModifyIndex": 60}
    ]
  },
  {
    "Node": {
      "ID": "b1fe00e3-5ad4-c2f1-52f9-0c7d1a6e0d42",
      "Node": "backup-node-b",
      "Address": "10.0.4.22",
      "Datacenter": "dc1",
      "TaggedAddresses": null,
      "Meta": null
    },
    "Service": {
      "Kind": "connect-proxy",
      "ID": "storage-2-sidecar-proxy",
      "Service": "storage-sidecar-proxy",
      "Address": "192.168.50.8",
      "Port": 21002,
      "Proxy": {"DestinationServiceName": "storage", "DestinationServiceID": "storage-2", "LocalServicePort": 8080}
    },
    "Checks": [
      {"Node": "backup-node-b", "CheckID": "serfHealth", "Status": "passing"},
      {"Node": "backup-node-b", "CheckID": "service:storage-2-sidecar-proxy:1", "Status": "critical",
       "Output": "dial tcp 192.168.50.8:21002: connect: connection refused"}
    ]
  }
]
"""#

private func healthEntry(node: String = #""Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"}"#,
                         service: String = #""Service": {"ID": "s1", "Service": "s1-sidecar-proxy", "Port": 21000}"#,
                         checks: String = #""Checks": []"#) -> String {
    "[{" + [node, service, checks].filter { !$0.isEmpty }.joined(separator: ", ") + "}]"
}

private let matchResponse = #"""
{
  "storage": [
    {
      "Description": "backup agents write snapshots, nothing else",
      "SourceNS": "default",
      "SourceName": "backup-agent",
      "DestinationNS": "default",
      "DestinationName": "storage",
      "SourcePartition": "default",
      "DestinationPartition": "default",
      "SourceType": "consul",
      "Action": "",
      "Permissions": [
        {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
        {"Action": "allow", "HTTP": {"PathPrefix": "/v1/snapshots/", "Methods": ["put", "POST"],
                                     "Header": [{"Name": "X-Backup-Job", "Present": true}]}}
      ],
      "Meta": {},
      "Precedence": 9,
      "CreatedAt": "0001-01-01T00:00:00Z",
      "UpdatedAt": "0001-01-01T00:00:00Z",
      "Hash": "q83vEjRWeJA=",
      "CreateIndex": 40,
      "ModifyIndex": 52
    },
    {
      "Description": "",
      "SourceNS": "default",
      "SourceName": "monitoring",
      "DestinationNS": "default",
      "DestinationName": "storage",
      "SourceType": "consul",
      "Action": "allow",
      "Meta": {},
      "Precedence": 9,
      "CreateIndex": 41,
      "ModifyIndex": 41
    },
    {
      "SourceNS": "default",
      "SourceName": "*",
      "DestinationNS": "default",
      "DestinationName": "storage",
      "SourceType": "consul",
      "Action": "deny",
      "Precedence": 8,
      "CreateIndex": 42,
      "ModifyIndex": 42
    }
  ]
}
"""#

private func match(_ intention: String, name: String = "storage") -> String {
    #"{"\#(name)": [\#(intention)]}"#
}

private let agentSelfWithPolicy = #"""
{
  "Config": {"Datacenter": "dc1", "PrimaryDatacenter": "dc1", "NodeName": "backup-node-a",
             "NodeID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Revision": "048f1936", "Server": false,
             "Version": "1.19.2", "BuildDate": "2024-08-27T16:06:44Z"},
  "DebugConfig": {
    "ACLResolverSettings": {"ACLDefaultPolicy": "deny", "ACLDownPolicy": "extend-cache", "ACLsEnabled": true},
    "ACLsEnabled": true,
    "ConnectCAConfig": {},
    "ConnectEnabled": true,
    "ConnectSidecarMaxPort": 21255,
    "ConnectSidecarMinPort": 21000,
    "Datacenter": "dc1",
    "DefaultIntentionPolicy": "deny",
    "DefaultQueryTime": "5m0s",
    "MaxQueryTime": "10m0s"
  },
  "Coord": {"Vec": [0, 0, 0, 0, 0, 0, 0, 0], "Error": 1.5, "Adjustment": 0, "Height": 0.00001},
  "Member": {"Name": "backup-node-a", "Addr": "10.0.4.21", "Port": 8301, "Tags": {"dc": "dc1"}, "Status": 1},
  "Stats": {"agent": {"checks": "4", "services": "4"}},
  "Meta": {"consul-network-segment": "", "consul-version": "1.19.2"},
  "xDS": {"SupportedProxies": {"envoy": ["1.29.7"]}, "Port": 8502, "Ports": {"Plaintext": 8502, "TLS": -1}}
}
"""#

private let htmlErrorBody = """
<html>
<head><title>502 Bad Gateway</title></head>
<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body>
</html>
"""

/// One decoder, type-erased, for the checks every endpoint shares.
struct ConsulDecoderCase: Sendable, CustomTestStringConvertible {
    var name: String
    var decode: @Sendable (Data) throws -> Any

    var testDescription: String { name }

    static let all: [ConsulDecoderCase] = [
        ConsulDecoderCase(name: "ca roots") { try ConsulCARoots.decode($0, source: rootsSource) },
        ConsulDecoderCase(name: "leaf") { try ConsulLeafCertificate.decode($0, source: leafSource) },
        ConsulDecoderCase(name: "agent service") { try ConsulAgentService.decode($0, source: serviceSource) },
        ConsulDecoderCase(name: "health connect") { try ConsulServiceInstance.decode($0, source: healthSource) },
        ConsulDecoderCase(name: "intention match") { try ConsulIntentionMatch.decode($0, source: matchSource) },
        ConsulDecoderCase(name: "agent self") { try ConsulAgentSelf.decode($0, source: selfSource) },
    ]

    /// A document of the wrong top-level kind for this endpoint.
    var wrongShape: String { name == "health connect" ? "{}" : "[]" }
}

// MARK: - CA roots

@Suite("ConsulAPI CA roots")
struct ConsulAPIRootsTests {
    @Test("rotation: both roots decode, the new one is active and carries the cross-signed cert")
    func rotation() throws {
        let roots = try ConsulCARoots.decode(data(rotationRoots), source: rootsSource)
        #expect(roots.trustDomain == "7e567ac2-551d-463f-8497-f78972856fc1.consul")
        #expect(roots.activeRootID == "5e:7c:91:0a:3b:c4:1d:22:8f:60:aa:17:e9:43:0b:6d:c2:58:f1:9e")
        #expect(roots.roots.count == 2)
        let old = roots.roots[0], new = roots.roots[1]
        #expect(old == ConsulCARoot(
            id: "15:bf:3a:7d:ff:ea:c1:8c:46:67:6c:db:b8:81:18:36:ad:e5:d0:c7", name: "Consul CA Primary Cert",
            serialNumber: 7, signingKeyID: "1f:91:ca:41:8f:ac:67:bf:59:c2:fa:4e:75:5c:d8:f0:55:de:be:75",
            notBefore: "2024-01-10T09:00:00Z", notAfter: "2034-01-07T09:00:00Z", rootCertPEM: oldRootPEM,
            intermediateCertPEMs: [], active: false))
        #expect(new.serialNumber == 12)
        #expect(new.active)
        #expect(new.intermediateCertPEMs == [crossSignedPEM])
        #expect(roots.activeRoot == new)
    }

    @Test("trusted roots are every listed root; intermediates are kept apart")
    func pemBundles() throws {
        let roots = try ConsulCARoots.decode(data(rotationRoots), source: rootsSource)
        #expect(roots.trustedRootsPEM == oldRootPEM + newRootPEM)
        #expect(!roots.trustedRootsPEM.contains("CROSS-SIGNED"))
        #expect(roots.intermediatesPEM == crossSignedPEM)
    }

    @Test("PEM blocks without a trailing newline are joined on separate lines")
    func pemJoinAddsNewlines() {
        let roots = ConsulCARoots(activeRootID: "a", trustDomain: "t.consul", roots: [
            ConsulCARoot(id: "a", rootCertPEM: "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----", active: true),
            ConsulCARoot(id: "b", rootCertPEM: "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----", active: false),
        ])
        #expect(roots.trustedRootsPEM
            == "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n")
        #expect(roots.intermediatesPEM == "")
    }

    @Test("IntermediateCerts null, missing, or empty all mean no intermediates")
    func intermediatesAbsent() throws {
        for variant in [#""IntermediateCerts": null,"#, "", #""IntermediateCerts": [],"#] {
            let roots = try ConsulCARoots.decode(data(singleRoot(variant + plainRootFields)), source: rootsSource)
            #expect(roots.roots[0].intermediateCertPEMs == [], "\(variant)")
        }
    }

    @Test("docs' single-root sample: optional fields missing take defaults")
    func minimalRoot() throws {
        let roots = try ConsulCARoots.decode(data(singleRoot(#""ID": "aa", "RootCert": "PEM""#)), source: rootsSource)
        #expect(roots.roots == [ConsulCARoot(id: "aa", name: "", serialNumber: 0, signingKeyID: "", notBefore: nil,
                                             notAfter: nil, rootCertPEM: "PEM", intermediateCertPEMs: [], active: false)])
        // No root flagged Active, but ActiveRootID names it.
        #expect(roots.activeRoot?.id == "aa")
    }

    @Test("activeRoot falls back to the Active flag when ActiveRootID names no listed root")
    func activeRootFallback() throws {
        let json = #"{"ActiveRootID": "zz", "TrustDomain": "t.consul", "Roots": [{"ID": "a", "RootCert": "A", "Active": false}, {"ID": "b", "RootCert": "B", "Active": true}]}"#
        let roots = try ConsulCARoots.decode(data(json), source: rootsSource)
        #expect(roots.activeRoot?.id == "b")
    }

    @Test("Roots empty or null: no roots, empty trust bundle")
    func noRoots() throws {
        for list in ["[]", "null"] {
            let json = #"{"ActiveRootID": "", "TrustDomain": "t.consul", "Roots": \#(list)}"#
            let roots = try ConsulCARoots.decode(data(json), source: rootsSource)
            #expect(roots.roots.isEmpty)
            #expect(roots.trustedRootsPEM == "")
            #expect(roots.activeRoot == nil)
        }
    }

    @Test("unknown and newer fields are ignored")
    func unknownFields() throws {
        let json = singleRoot(plainRootFields + #", "SigningCert": "x", "FutureField": {"nested": [1, 2, {"a": null}]}"#,
                              top: #""QueryMeta": {"Index": 5}, "Extra": true, "#)
        let roots = try ConsulCARoots.decode(data(json), source: rootsSource)
        #expect(roots.roots[0].id == "aa")
    }

    @Test("SerialNumber up to Int64.max is exact; above it, Consul's uint64 is accepted (rounded)")
    func largeSerialNumbers() throws {
        let cases: [(String, UInt64)] = [
            ("0", 0),
            ("9007199254740993", 9_007_199_254_740_993),
            ("9223372036854775807", UInt64(Int64.max)),
            ("9223372036854775808", 9_223_372_036_854_775_808),
            ("18446744073709551615", UInt64.max),
        ]
        for (text, expected) in cases {
            let json = singleRoot(#""ID": "aa", "RootCert": "PEM", "SerialNumber": \#(text)"#)
            let roots = try ConsulCARoots.decode(data(json), source: rootsSource)
            #expect(roots.roots[0].serialNumber == expected, "\(text)")
        }
    }

    @Test("wrong types name the field")
    func wrongTypes() throws {
        let cases: [(String, String, String)] = [
            (#""ID": "aa", "RootCert": "PEM", "SerialNumber": -3"#, "Roots[0].SerialNumber", "non-negative"),
            (#""ID": "aa", "RootCert": "PEM", "SerialNumber": "07""#, "Roots[0].SerialNumber", "found string"),
            (#""ID": "aa", "RootCert": "PEM", "SerialNumber": 7.5"#, "Roots[0].SerialNumber", "integer"),
            (#""ID": "aa", "RootCert": "PEM", "Active": "true""#, "Roots[0].Active", "true or false"),
            (#""ID": "aa", "RootCert": "PEM", "Active": 1"#, "Roots[0].Active", "true or false"),
            (#""ID": "aa", "RootCert": "PEM", "IntermediateCerts": "PEM""#, "Roots[0].IntermediateCerts", "expected an array"),
            (#""ID": "aa", "RootCert": "PEM", "IntermediateCerts": ["ok", 5]"#, "Roots[0].IntermediateCerts[1]", "expected a string"),
            (#""ID": "aa", "RootCert": "PEM", "IntermediateCerts": [""]"#, "Roots[0].IntermediateCerts[0]", "must not be empty"),
            (#""ID": "aa", "RootCert": ["PEM"]"#, "Roots[0].RootCert", "expected a string"),
            (#""ID": 17, "RootCert": "PEM""#, "Roots[0].ID", "expected a string"),
            (#""ID": "aa", "RootCert": "PEM", "NotAfter": 1700000000"#, "Roots[0].NotAfter", "expected a string"),
        ]
        for (fields, path, words) in cases {
            let error = try #require(configError { try ConsulCARoots.decode(data(singleRoot(fields)), source: rootsSource) },
                                     "\(fields)")
            #expect(error.source == rootsSource)
            #expect(error.path == path, "\(fields)")
            #expect(error.message.contains(words), "\(fields): \(error.message)")
        }
    }

    @Test("required fields: missing or empty is an error naming the field")
    func requiredFields() throws {
        let cases: [(String, String)] = [
            (#"{"TrustDomain": "t.consul", "Roots": []}"#, "ActiveRootID"),
            (#"{"ActiveRootID": "a", "TrustDomain": "t", "Roots": [{"RootCert": "PEM"}]}"#, "Roots[0].ID"),
            (#"{"ActiveRootID": "a", "TrustDomain": "t", "Roots": [{"ID": "a"}]}"#, "Roots[0].RootCert"),
            (#"{"ActiveRootID": "a", "TrustDomain": "t", "Roots": [{"ID": "a", "RootCert": ""}]}"#, "Roots[0].RootCert"),
            (#"{"ActiveRootID": "a", "TrustDomain": "t", "Roots": [{"ID": "a", "RootCert": null}]}"#, "Roots[0].RootCert"),
        ]
        for (json, path) in cases {
            let error = try #require(configError { try ConsulCARoots.decode(data(json), source: rootsSource) }, "\(json)")
            #expect(error.path == path, "\(json)")
        }
    }

    @Test("Roots of the wrong kind and roots that are not objects are refused")
    func wrongContainers() throws {
        let object = try #require(configError {
            try ConsulCARoots.decode(data(#"{"ActiveRootID": "a", "TrustDomain": "t", "Roots": {"ID": "a"}}"#), source: rootsSource)
        })
        #expect(object.path == "Roots")
        #expect(object.message.contains("expected an array, found object"))
        let item = try #require(configError {
            try ConsulCARoots.decode(data(#"{"ActiveRootID": "a", "TrustDomain": "t", "Roots": ["PEM"]}"#), source: rootsSource)
        })
        #expect(item.path == "Roots[0]")
        #expect(item.message.contains("expected an object, found string"))
    }
}

// MARK: - Leaf certificate

@Suite("ConsulAPI leaf certificate")
struct ConsulAPILeafTests {
    @Test("leaf response decodes every field; CertPEM keeps the whole chain")
    func leafDecodes() throws {
        let leaf = try ConsulLeafCertificate.decode(data(leafResponse), source: leafSource)
        #expect(leaf == ConsulLeafCertificate(
            serialNumber: "3a:5f:07:c9",
            certPEM: "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nINTERMEDIATE\n-----END CERTIFICATE-----\n",
            privateKeyPEM: "-----BEGIN EC PRIVATE KEY-----\nSECRET-KEY-MATERIAL\n-----END EC PRIVATE KEY-----\n",
            service: "storage",
            serviceURI: "spiffe://7e567ac2-551d-463f-8497-f78972856fc1.consul/ns/default/dc/dc1/svc/storage",
            validAfter: "2025-03-02T11:31:05Z", validBefore: "2025-03-05T11:31:05Z",
            createIndex: 1290, modifyIndex: 1290))
    }

    @Test("description never shows the private key")
    func descriptionRedactsKey() throws {
        let leaf = try ConsulLeafCertificate.decode(data(leafResponse), source: leafSource)
        #expect(!leaf.description.contains("SECRET-KEY-MATERIAL"))
        #expect(!"\(leaf)".contains("SECRET-KEY-MATERIAL"))
        #expect(leaf.description.contains("3a:5f:07:c9"))
        #expect(leaf.description.contains("<redacted>"))
    }

    @Test("missing indexes default to 0; unknown fields (Namespace, Agent) are ignored")
    func optionalIndexes() throws {
        let json = leaf(removing: "CreateIndex").replacingOccurrences(of: #"  "ModifyIndex": 1290"#, with: #"  "Agent": "n1""#)
        let leaf = try ConsulLeafCertificate.decode(data(json), source: leafSource)
        #expect(leaf.createIndex == 0)
        #expect(leaf.modifyIndex == 0)
        #expect(leaf.service == "storage")
    }

    @Test("each required field, when missing, is named", arguments: [
        "SerialNumber", "CertPEM", "PrivateKeyPEM", "Service", "ServiceURI", "ValidAfter", "ValidBefore",
    ])
    func requiredField(_ field: String) throws {
        let error = try #require(configError { try ConsulLeafCertificate.decode(data(leaf(removing: field)), source: leafSource) })
        #expect(error.source == leafSource)
        #expect(error.path == field)
        #expect(error.message.contains("required field is missing"))
    }

    @Test("wrong types and empty PEMs name the field")
    func wrongTypes() throws {
        let cases: [(String, String, String)] = [
            ("CreateIndex", #""1290""#, "found string"),
            ("ModifyIndex", "-1", "non-negative"),
            ("ValidAfter", "1740915065", "expected a string"),
            ("SerialNumber", "58", "expected a string"),
            ("PrivateKeyPEM", #""""#, "must not be empty"),
            ("CertPEM", #""""#, "must not be empty"),
            ("CertPEM", "null", "required field is missing"),
        ]
        for (field, value, words) in cases {
            let error = try #require(configError {
                try ConsulLeafCertificate.decode(data(leaf(replacing: (field, value))), source: leafSource)
            }, "\(field)=\(value)")
            #expect(error.path == field, "\(field)=\(value)")
            #expect(error.message.contains(words), "\(field)=\(value): \(error.message)")
        }
    }
}

// MARK: - Agent service

@Suite("ConsulAPI agent service")
struct ConsulAPIAgentServiceTests {
    @Test("sidecar registration with upstreams decodes through ProxyDefinition")
    func sidecarWithUpstreams() throws {
        let service = try ConsulAgentService.decode(data(agentService()), source: serviceSource)
        #expect(service.kind == "connect-proxy")
        #expect(service.id == "storage-sidecar-proxy")
        #expect(service.service == "storage-sidecar-proxy")
        #expect(service.contentHash == "4ecd29c7bc647ca8")
        let proxy = service.proxy
        #expect(proxy.id == "storage-sidecar-proxy")
        #expect(proxy.name == "storage-sidecar-proxy", "the name comes from \"Service\"")
        #expect(proxy.address == "0.0.0.0", "empty Address means all interfaces")
        #expect(proxy.port == 21000)
        #expect(proxy.destinationServiceName == "storage")
        #expect(proxy.destinationServiceID == "storage")
        #expect(proxy.localServiceAddress == "127.0.0.1")
        #expect(proxy.localServicePort == 8080)
        #expect(proxy.config.protocol == "http")
        #expect(proxy.publicBindPort == 21001)
        // The answer names a Namespace (Consul Enterprise): upstreams inherit it unless they
        // name their own, and their queries will name it.
        #expect(proxy.tenancy == Tenancy(namespace: "default", partition: "default"))
        #expect(proxy.upstreams == [
            Upstream(destinationName: "metadata-db", tenancy: .default,
                     datacenter: nil, localBindAddress: "127.0.0.1", localBindPort: 9191, connectTimeoutMs: 2500),
            Upstream(destinationName: "object-store", tenancy: Tenancy(namespace: "backups"),
                     datacenter: nil, localBindAddress: "127.0.0.2", localBindPort: 9192, connectTimeoutMs: 10000),
        ])
        #expect(proxy.upstreams.map(\.instanceKey) == ["metadata-db", "backups/object-store"])
        #expect(proxy.skippedUpstreams.isEmpty, "\(proxy.skippedUpstreams)")
    }

    @Test("Consul CE answers state no Namespace: an upstream naming another namespace or partition is skipped")
    func ceRegistrationSkipsOtherTenancy() throws {
        let ce = agentService().replacingOccurrences(of: "\"Namespace\": \"default\",\n", with: "")
        let proxy = try ConsulAgentService.decode(data(ce), source: serviceSource).proxy
        #expect(proxy.tenancy == nil)
        #expect(proxy.upstreams.map(\.instanceKey) == ["metadata-db"])
        #expect(proxy.skippedUpstreams.count == 1 && proxy.skippedUpstreams[0].contains("needs Consul Enterprise"),
                "\(proxy.skippedUpstreams)")
    }

    @Test("Namespace and Partition of the registration are inherited; bad names are refused")
    func tenancyInheritance() throws {
        let enterprise = agentService(top: #""Partition": "eu","#).replacingOccurrences(of: "\"Namespace\": \"default\"", with: "\"Namespace\": \"team-a\"")
        let proxy = try ConsulAgentService.decode(data(enterprise), source: serviceSource).proxy
        #expect(proxy.tenancy == Tenancy(namespace: "team-a", partition: "eu"))
        #expect(proxy.upstreams.map(\.tenancy) == [Tenancy(namespace: "team-a", partition: "eu"), Tenancy(namespace: "backups", partition: "eu")])
        #expect(proxy.upstreams.map(\.instanceKey) == ["eu/team-a/metadata-db", "eu/backups/object-store"])
        #expect(proxy.upstreams.map(\.listenerName) == ["upstream:eu/team-a/metadata-db", "upstream:eu/backups/object-store"])
        for bad in ["*", "a/b", "", "x y", String(repeating: "n", count: 65)] where !bad.isEmpty {
            let text = agentService().replacingOccurrences(of: "\"Namespace\": \"default\"", with: "\"Namespace\": \"\(bad)\"")
            #expect(throws: ConfigError.self, "\(bad)") { try ConsulAgentService.decode(data(text), source: serviceSource) }
        }
        let badUpstream = agentService(upstreams: #"[{"DestinationName": "db", "DestinationNamespace": "*", "LocalBindPort": 9000}]"#)
        let skipped = try ConsulAgentService.decode(data(badUpstream), source: serviceSource).proxy
        #expect(skipped.upstreams.isEmpty && skipped.skippedUpstreams.count == 1, "\(skipped.skippedUpstreams)")
    }

    @Test("Upstreams null, empty or missing: no upstreams")
    func noUpstreams() throws {
        for upstreams in ["null", "[]"] {
            let service = try ConsulAgentService.decode(data(agentService(upstreams: upstreams)), source: serviceSource)
            #expect(service.proxy.upstreams.isEmpty, "\(upstreams)")
        }
        let minimal = #"{"Kind": "connect-proxy", "ID": "p1", "Service": "p", "Port": 21000, "Proxy": {"DestinationServiceName": "web"}}"#
        let service = try ConsulAgentService.decode(data(minimal), source: serviceSource)
        #expect(service.proxy.upstreams.isEmpty)
        #expect(service.proxy.localServicePort == nil)
        #expect(service.contentHash == nil)
    }

    @Test("a stray \"Name\" field does not override \"Service\"")
    func serviceWinsOverName() throws {
        let json = agentService(top: #""Name": "something-else", "#)
        let service = try ConsulAgentService.decode(data(json), source: serviceSource)
        #expect(service.proxy.name == "storage-sidecar-proxy")
    }

    @Test("proxy config from the registration: timeouts and lifetime reach ProxyConfig")
    func proxyConfigKeys() throws {
        let json = #"{"Kind": "connect-proxy", "ID": "p1", "Service": "p", "Port": 21000, "Proxy": {"DestinationServiceName": "web", "Config": {"handshake_timeout_ms": "2500", "local_connect_timeout_ms": 300, "max_connection_lifetime": "12h", "bind_address": "10.0.4.17"}}}"#
        let proxy = try ConsulAgentService.decode(data(json), source: serviceSource).proxy
        #expect(proxy.config.handshakeTimeoutMs == 2500)
        #expect(proxy.config.localConnectTimeoutMs == 300)
        #expect(proxy.config.maxConnectionLifetimeNs == Int64(43_200) * 1_000_000_000)
        #expect(proxy.publicBindAddress == "10.0.4.17")
    }

    @Test("only connect-proxy registrations are accepted", arguments: [
        (#""Kind": "mesh-gateway","#, "kind \"mesh-gateway\""),
        ("", "plain service"),
        (#""Kind": "","#, "plain service"),
    ])
    func otherKinds(kind: String, words: String) throws {
        let error = try #require(configError { try ConsulAgentService.decode(data(agentService(kind: kind)), source: serviceSource) })
        #expect(error.path == "Kind")
        #expect(error.message.contains(words), "\(error.message)")
        #expect(error.message.contains("storage-sidecar-proxy"))
    }

    @Test("missing or empty Service and ID are named")
    func missingNameOrID() throws {
        let noService = try #require(configError {
            try ConsulAgentService.decode(data(agentService(service: "")), source: serviceSource)
        })
        #expect(noService.path == "Service")
        let emptyService = try #require(configError {
            try ConsulAgentService.decode(data(agentService(service: #""Service": "","#)), source: serviceSource)
        })
        #expect(emptyService.path == "Service")
        #expect(emptyService.message.contains("must not be empty"))
        let json = #"{"Kind": "connect-proxy", "Service": "p", "Proxy": {"DestinationServiceName": "web"}}"#
        let noID = try #require(configError { try ConsulAgentService.decode(data(json), source: serviceSource) })
        #expect(noID.path == "ID")
    }

    @Test("errors inside the proxy block come from ProxyDefinition with their path")
    func proxyErrors() throws {
        let cases: [(String, String)] = [
            (#"{"Kind": "connect-proxy", "ID": "p1", "Service": "p", "Port": 21000, "Proxy": {}}"#, "proxy.destination_service_name"),
            (#"{"Kind": "connect-proxy", "ID": "p1", "Service": "p", "Port": "x", "Proxy": {"DestinationServiceName": "web"}}"#, "port"),
            (#"{"Kind": "connect-proxy", "ID": "p1", "Service": "p", "Port": 21000}"#, "proxy"),
            (#"{"Kind": "connect-proxy", "ID": "p1", "Service": "p", "Port": 21000, "Proxy": {"DestinationServiceName": "web", "Upstreams": {}}}"#,
             "proxy.upstreams"),
        ]
        for (json, path) in cases {
            let error = try #require(configError { try ConsulAgentService.decode(data(json), source: serviceSource) }, "\(json)")
            #expect(error.source == serviceSource)
            #expect(error.path.lowercased() == path, "\(json): \(error)")
        }
    }

    @Test("wrong types at the top level are named")
    func wrongTypes() throws {
        let kind = try #require(configError {
            try ConsulAgentService.decode(data(agentService(kind: #""Kind": 3,"#)), source: serviceSource)
        })
        #expect(kind.path == "Kind")
        let hash = try #require(configError {
            try ConsulAgentService.decode(data(agentService(top: #""ContentHash": 12, "#).replacingOccurrences(of: #""ContentHash": "4ecd29c7bc647ca8","#, with: "")), source: serviceSource)
        })
        #expect(hash.path == "ContentHash")
    }
}

// MARK: - Health

@Suite("ConsulAPI health connect")
struct ConsulAPIHealthTests {
    @Test("two instances: node address fallback, failing check")
    func twoInstances() throws {
        let instances = try ConsulServiceInstance.decode(data(healthResponse), source: healthSource)
        #expect(instances.count == 2)
        let a = instances[0], b = instances[1]
        #expect(a.node == .init(id: "40e4a748-2192-161a-0510-9bf59fe950b5", node: "backup-node-a", address: "10.0.4.21", datacenter: "dc1",
                               wanAddress: "10.0.4.21"))
        #expect(a.service == .init(id: "storage-sidecar-proxy", service: "storage-sidecar-proxy", kind: "connect-proxy",
                                   address: "", port: 21000, proxyDestinationName: "storage"))
        #expect(a.checks.map(\.checkID) == ["serfHealth", "service:storage-sidecar-proxy:1"])
        #expect(a.dialAddress == "10.0.4.21", "empty Service.Address: dial the node")
        #expect(a.isPassing)
        #expect(b.dialAddress == "192.168.50.8")
        #expect(b.service.port == 21002)
        #expect(!b.isPassing)
        #expect(b.checks[1] == .init(checkID: "service:storage-2-sidecar-proxy:1", status: "critical"))
    }

    @Test("empty result and null/missing checks")
    func emptyCases() throws {
        #expect(try ConsulServiceInstance.decode(data("[]"), source: healthSource).isEmpty)
        #expect(try ConsulServiceInstance.decode(data(" \n[ ]\n"), source: healthSource).isEmpty)
        for checks in [#""Checks": null"#, ""] {
            let instances = try ConsulServiceInstance.decode(data(healthEntry(checks: checks)), source: healthSource)
            #expect(instances[0].checks.isEmpty)
            #expect(instances[0].isPassing, "no checks counts as passing")
            #expect(instances[0].node.id == "")
            #expect(instances[0].service.kind == "")
            #expect(instances[0].service.proxyDestinationName == nil)
        }
    }

    @Test("check states other than passing are not passing", arguments: ["warning", "critical", "maintenance", "Passing"])
    func nonPassingStates(_ status: String) throws {
        let json = healthEntry(checks: #""Checks": [{"CheckID": "a", "Status": "passing"}, {"CheckID": "b", "Status": "\#(status)"}]"#)
        let instance = try #require(try ConsulServiceInstance.decode(data(json), source: healthSource).first)
        #expect(!instance.isPassing)
    }

    @Test("connect-native instance: empty proxy block, own address")
    func connectNative() throws {
        let json = healthEntry(service: #""Service": {"ID": "db-1", "Service": "db", "Address": "10.1.1.1", "Port": 5432, "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}}, "Connect": {"Native": true}}"#)
        let instance = try #require(try ConsulServiceInstance.decode(data(json), source: healthSource).first)
        #expect(instance.service.proxyDestinationName == nil)
        #expect(instance.service.kind == "")
        #expect(instance.dialAddress == "10.1.1.1")
    }

    @Test("errors name the entry and field")
    func errors() throws {
        let cases: [(String, String, String)] = [
            (healthEntry(node: ""), "[0].Node", "required field is missing"),
            (healthEntry(service: ""), "[0].Service", "required field is missing"),
            (healthEntry(service: #""Service": {"ID": "s1", "Service": "s"}"#), "[0].Service.Port", "unix socket"),
            (healthEntry(service: #""Service": {"ID": "s1", "Service": "s", "Port": 0}"#), "[0].Service.Port", "outside 1-65535"),
            (healthEntry(service: #""Service": {"ID": "s1", "Service": "s", "Port": "21000"}"#), "[0].Service.Port", "expected an integer"),
            (healthEntry(service: #""Service": {"ID": "s1", "Service": "s", "Port": 70000}"#), "[0].Service.Port", "outside 1-65535"),
            (healthEntry(service: #""Service": {"ID": "s1", "Port": 21000}"#), "[0].Service.Service", "required field is missing"),
            (healthEntry(service: #""Service": {"ID": "s1", "Service": "s", "Port": 1, "Address": 5}"#), "[0].Service.Address", "expected a string"),
            (healthEntry(service: #""Service": {"ID": "s1", "Service": "s", "Port": 1, "Proxy": []}"#), "[0].Service.Proxy", "expected an object"),
            (healthEntry(node: #""Node": {"Node": "n1", "Address": "10.0.0.1"}"#), "[0].Node.Datacenter", "required field is missing"),
            (healthEntry(node: #""Node": {"Node": "n1", "Datacenter": "dc1"}"#), "[0].Node.Address", "required field is missing"),
            (healthEntry(node: #""Node": "n1""#), "[0].Node", "expected an object"),
            (healthEntry(checks: #""Checks": {}"#), "[0].Checks", "expected an array"),
            (healthEntry(checks: #""Checks": [{"CheckID": "a"}]"#), "[0].Checks[0].Status", "required field is missing"),
            (healthEntry(checks: #""Checks": [{"CheckID": "a", "Status": true}]"#), "[0].Checks[0].Status", "expected a string"),
            ("[null]", "[0]", "expected an object"),
        ]
        for (json, path, words) in cases {
            let error = try #require(configError { try ConsulServiceInstance.decode(data(json), source: healthSource) }, "\(json)")
            #expect(error.source == healthSource)
            #expect(error.path == path, "\(json)")
            #expect(error.message.contains(words), "\(json): \(error.message)")
        }
    }

    @Test("One entry that cannot be dialled (no Port: a socket-path instance) is skipped with its reason; the others stay")
    func usableEntries() throws {
        let socketInstance = #"{"Node": {"Node": "n3", "Address": "10.0.0.3", "Datacenter": "dc1"}, "Service": {"ID": "s3", "Service": "storage-sidecar-proxy", "SocketPath": "/run/s.sock"}, "Checks": []}"#
        let list = healthResponse.trimmingCharacters(in: .whitespacesAndNewlines)
        let mixed = String(list.dropLast()) + ", \(socketInstance)]"
        let answer = try ConsulServiceInstance.decodeUsable(data(mixed), source: healthSource)
        #expect(answer.instances.count == 2)
        #expect(answer.skipped.count == 1 && answer.skipped[0].hasPrefix("[2].Service.Port:"), "\(answer.skipped)")
        #expect(throws: ConfigError.self) { try ConsulServiceInstance.decodeUsable(data("{}"), source: healthSource) }
        #expect(throws: ConfigError.self, "strict decode still names the entry") { try ConsulServiceInstance.decode(data(mixed), source: healthSource) }
    }

    @Test("Best address as Consul's: WAN tagged addresses from another datacenter, service before node")
    func bestAddress() throws {
        func instance(_ service: String, _ node: String) throws -> ConsulServiceInstance {
            let json = healthEntry(node: #""Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc2"\#(node)}"#,
                                   service: #""Service": {"ID": "s1", "Service": "s", "Port": 21000\#(service)}"#)
            return try #require(try ConsulServiceInstance.decode(data(json), source: healthSource).first)
        }
        let plain = try instance("", "")
        #expect(plain.bestAddress(wan: false) == ("10.0.0.1", 21000) && plain.bestAddress(wan: true) == ("10.0.0.1", 21000))
        let nodeWAN = try instance("", #", "TaggedAddresses": {"lan": "10.0.0.1", "wan": "198.51.100.1"}"#)
        #expect(nodeWAN.bestAddress(wan: true) == ("198.51.100.1", 21000) && nodeWAN.bestAddress(wan: false) == ("10.0.0.1", 21000))
        let serviceAddress = try instance(#", "Address": "10.9.9.9""#, #", "TaggedAddresses": {"wan": "198.51.100.1"}"#)
        #expect(serviceAddress.bestAddress(wan: true) == ("10.9.9.9", 21000), "a service address beats the node's WAN address")
        let serviceWAN = try instance(#", "Address": "10.9.9.9", "TaggedAddresses": {"wan": {"Address": "203.0.113.7", "Port": 8443}, "lan": {"Address": "10.9.9.9", "Port": 21000}}"#,
                                      #", "TaggedAddresses": {"wan": "198.51.100.1"}"#)
        #expect(serviceWAN.bestAddress(wan: true) == ("203.0.113.7", 8443) && serviceWAN.bestAddress(wan: false) == ("10.9.9.9", 21000))
        let wanNoPort = try instance(#", "TaggedAddresses": {"wan": {"Address": "203.0.113.7", "Port": 0}}"#, "")
        #expect(wanNoPort.bestAddress(wan: true) == ("203.0.113.7", 21000), "a WAN port of 0 keeps the service port")
    }

    @Test("the second entry's error carries index 1")
    func secondEntryError() throws {
        let broken = healthResponse.replacingOccurrences(of: #""Port": 21002,"#, with: #""Port": -1,"#)
        let error = try #require(configError { try ConsulServiceInstance.decode(data(broken), source: healthSource) })
        #expect(error.path == "[1].Service.Port")
    }
}

// MARK: - Intentions

@Suite("ConsulAPI intention match")
struct ConsulAPIIntentionMatchTests {
    @Test("L4 and L7 intentions decode in Consul's order")
    func l4AndL7() throws {
        let intentions = try ConsulIntentionMatch.decode(data(matchResponse), source: matchSource, destination: "storage")
        #expect(intentions.count == 3)
        let l7 = intentions[0]
        #expect(l7.sourceName == "backup-agent")
        #expect(l7.destinationName == "storage")
        #expect(l7.action == nil, "\"Action\": \"\" on an L7 intention")
        #expect(l7.hasPermissions)
        #expect(l7.description == "backup agents write snapshots, nothing else")
        #expect(l7.permissions == [
            IntentionPermission(action: .deny, http: HTTPPermissionMatch(path: .prefix("/admin"))),
            IntentionPermission(action: .allow, http: HTTPPermissionMatch(
                path: .prefix("/v1/snapshots/"), methods: ["PUT", "POST"],
                headers: [.init(name: "X-Backup-Job", condition: .present)])),
        ])
        #expect(intentions[1] == Intention(destinationName: "storage", sourceName: "monitoring", action: .allow))
        #expect(intentions[2] == Intention(destinationName: "storage", sourceName: "*", action: .deny))
    }

    @Test("decoded intentions drive IntentionSet decisions")
    func decisions() throws {
        let intentions = try ConsulIntentionMatch.decode(data(matchResponse), source: matchSource, destination: "storage")
        let set = IntentionSet(intentions, defaultAction: .deny)
        let trustDomain = "7e567ac2-551d-463f-8497-f78972856fc1.consul"
        let monitoring = try SPIFFEID.parse("spiffe://\(trustDomain)/ns/default/dc/dc1/svc/monitoring")
        let agent = try SPIFFEID.parse("spiffe://\(trustDomain)/ns/default/dc/dc1/svc/backup-agent")
        let other = try SPIFFEID.parse("spiffe://\(trustDomain)/ns/default/dc/dc1/svc/web")
        #expect(set.decide(source: monitoring, destination: "storage").allowed)
        #expect(!set.decide(source: agent, destination: "storage").allowed, "L7 intention on an L4 check")
        #expect(set.decide(source: agent, destination: "storage", l7: true).allowed)
        #expect(!set.decide(source: other, destination: "storage").allowed)
    }

    @Test("keyed map: null list, several names, names differing only in punctuation")
    func keyedMap() throws {
        let json = #"{"backup-db": null, "backupdb": [{"SourceName": "a", "DestinationName": "backupdb", "Action": "allow"}], "Storage": []}"#
        let match = try ConsulIntentionMatch.decode(data(json), source: matchSource)
        #expect(match.intentions(for: "backup-db") == [])
        #expect(match.intentions(for: "backupdb")?.map(\.sourceName) == ["a"])
        #expect(match.intentions(for: "Storage") == [])
        #expect(match.intentions(for: "storage") == nil, "keys are exact")
        #expect(try ConsulIntentionMatch.decode(data(#"{"storage": null}"#), source: matchSource, destination: "storage") == [])
    }

    @Test("a response without the requested name is an error")
    func missingDestination() throws {
        let empty = try #require(configError { try ConsulIntentionMatch.decode(data("{}"), source: matchSource, destination: "storage") })
        #expect(empty.message.contains("no entry for \"storage\""))
        #expect(empty.message.contains("none"))
        let other = try #require(configError {
            try ConsulIntentionMatch.decode(data(#"{"web": []}"#), source: matchSource, destination: "storage")
        })
        #expect(other.message.contains("\"web\""))
    }

    @Test("namespaces and partitions default to \"default\" when missing or empty; peer kept")
    func defaults() throws {
        let missing = try ConsulIntentionMatch.decode(data(match(#"{"SourceName": "web", "DestinationName": "storage", "Action": "allow"}"#)),
                                                      source: matchSource, destination: "storage")
        #expect(missing == [Intention(destinationName: "storage", destinationNamespace: "default", sourceName: "web",
                                      sourceNamespace: "default", sourcePartition: "default", sourcePeer: "", action: .allow)])
        let empty = try ConsulIntentionMatch.decode(data(match(#"{"SourceName": "web", "SourceNS": "", "SourcePartition": "", "DestinationName": "storage", "DestinationNS": "", "Action": "deny", "Description": null}"#)),
                                                    source: matchSource, destination: "storage")
        #expect(empty[0].sourceNamespace == "default")
        #expect(empty[0].destinationNamespace == "default")
        #expect(empty[0].sourcePartition == "default")
        #expect(empty[0].description == "")
        let peered = try ConsulIntentionMatch.decode(data(match(#"{"SourceName": "web", "SourcePeer": "dc2-cluster", "SourceNS": "team-a", "SourcePartition": "", "DestinationName": "storage", "Action": "allow"}"#)),
                                                     source: matchSource, destination: "storage")
        #expect(peered[0].sourcePeer == "dc2-cluster")
        #expect(peered[0].sourceNamespace == "team-a")
    }

    @Test("action is case-insensitive; Permissions null or empty with an Action is L4")
    func actionForms() throws {
        for extra in [#""Permissions": null"#, #""Permissions": []"#, #""Unknown": 1"#] {
            let json = match(#"{"SourceName": "web", "DestinationName": "storage", "Action": "DENY", \#(extra)}"#)
            let intention = try ConsulIntentionMatch.decode(data(json), source: matchSource, destination: "storage")[0]
            #expect(intention.action == .deny)
            #expect(!intention.hasPermissions)
        }
    }

    @Test("invalid intentions name the field")
    func errors() throws {
        let l7 = #""Permissions": [{"Action": "allow", "HTTP": {"PathExact": "/x"}}]"#
        let cases: [(String, String, String)] = [
            (#"{"SourceName": "web", "DestinationName": "storage", "Action": ""}"#, "storage[0]", "either Action or Permissions"),
            (#"{"SourceName": "web", "DestinationName": "storage"}"#, "storage[0]", "either Action or Permissions"),
            (#"{"SourceName": "web", "DestinationName": "storage", "Action": "allow", \#(l7)}"#, "storage[0]", "not both"),
            (#"{"SourceName": "web", "DestinationName": "storage", "Action": "maybe"}"#, "storage[0].Action", "\"maybe\""),
            (#"{"SourceName": "web", "DestinationName": "storage", "Action": true}"#, "storage[0].Action", "expected a string"),
            (#"{"DestinationName": "storage", "Action": "allow"}"#, "storage[0].SourceName", "required field is missing"),
            (#"{"SourceName": "", "DestinationName": "storage", "Action": "allow"}"#, "storage[0].SourceName", "must not be empty"),
            (#"{"SourceName": "web", "Action": "allow"}"#, "storage[0].DestinationName", "required field is missing"),
            (#"{"SourceName": "web", "DestinationName": "storage", "SourceNS": 4, "Action": "allow"}"#, "storage[0].SourceNS", "expected a string"),
            (#"{"SourceName": "web", "DestinationName": "storage", "Permissions": {"Action": "allow"}}"#, "storage[0].Permissions", "expected an array"),
            (#"{"SourceName": "web", "DestinationName": "storage", "Permissions": [{"Action": "allow", "HTTP": {"PathExact": "x"}}]}"#,
             "storage[0].Permissions[0].http.path_exact", "must begin with"),
            (#"{"SourceName": "web", "DestinationName": "storage", "Permissions": [{"Action": "allow"}]}"#,
             "storage[0].Permissions[0].http", "required field is missing"),
            (#"{"SourceName": "web", "DestinationName": "storage", "Permissions": [{"Action": "allow", "HTTP": {"Header": [{"Name": "X"}]}}]}"#,
             "storage[0].Permissions[0].http.header[0]", "exactly one of"),
            (#""not an intention""#, "storage[0]", "expected an object"),
        ]
        for (intention, path, words) in cases {
            let error = try #require(configError { try ConsulIntentionMatch.decode(data(match(intention)), source: matchSource) }, "\(intention)")
            #expect(error.source == matchSource)
            #expect(error.path == path, "\(intention)")
            #expect(error.message.contains(words), "\(intention): \(error.message)")
        }
    }

    @Test("a permission's JWT requirement is kept (it decides deny) rather than dropped or refusing the answer", arguments: [
        #"{"Action": "allow", "HTTP": {"PathPrefix": "/"}, "JWT": {"Providers": [{"Name": "okta"}]}}"#,
        #"{"Action": "allow", "JWT": {"Providers": [{"Name": "okta"}]}}"#,
    ])
    func permissionJWTKept(permission: String) throws {
        let json = match(#"{"SourceName": "web", "DestinationName": "storage", "Permissions": [\#(permission)]}"#)
        let intention = try ConsulIntentionMatch.decode(data(json), source: matchSource, destination: "storage")[0]
        #expect(intention.permissions.first?.requiresJWT == true)
    }

    @Test("Contains and IgnoreCase (Consul 1.20.1) decode")
    func containsAndIgnoreCase() throws {
        let json = match(#"{"SourceName": "web", "DestinationName": "storage", "Permissions": [{"Action": "deny", "HTTP": {"Header": [{"Name": "X-Role", "Contains": "admin", "IgnoreCase": true}]}}]}"#)
        let intention = try ConsulIntentionMatch.decode(data(json), source: matchSource, destination: "storage")[0]
        #expect(intention.permissions == [IntentionPermission(action: .deny, http: HTTPPermissionMatch(
            headers: [HTTPPermissionMatch.HeaderRule(name: "x-role", condition: .contains("admin"), ignoreCase: true)]))])
    }

    @Test("IgnoreCase false is the default and accepted")
    func ignoreCaseFalse() throws {
        let json = match(#"{"SourceName": "web", "DestinationName": "storage", "Permissions": [{"Action": "deny", "HTTP": {"Header": [{"Name": "X-Role", "Exact": "admin", "IgnoreCase": false}]}}]}"#)
        let intention = try ConsulIntentionMatch.decode(data(json), source: matchSource, destination: "storage")[0]
        #expect(intention.permissions == [IntentionPermission(action: .deny, http: HTTPPermissionMatch(
            headers: [.init(name: "X-Role", condition: .exact("admin"))]))])
    }

    @Test("the name's value must be an array or null")
    func wrongListKind() throws {
        let error = try #require(configError { try ConsulIntentionMatch.decode(data(#"{"storage": {"SourceName": "a"}}"#), source: matchSource) })
        #expect(error.path == "storage")
        #expect(error.message.contains("expected an array, found object"))
    }
}

// MARK: - Agent self

@Suite("ConsulAPI agent self")
struct ConsulAPIAgentSelfTests {
    @Test("datacenter and DefaultIntentionPolicy")
    func withPolicy() throws {
        let agent = try ConsulAgentSelf.decode(data(agentSelfWithPolicy), source: selfSource)
        #expect(agent == ConsulAgentSelf(datacenter: "dc1", defaultIntentionPolicy: .deny))
    }

    @Test("DefaultIntentionPolicy empty, missing, or no DebugConfig: nil")
    func withoutPolicy() throws {
        let variants = [
            agentSelfWithPolicy.replacingOccurrences(of: #""DefaultIntentionPolicy": "deny""#, with: #""DefaultIntentionPolicy": """#),
            agentSelfWithPolicy.replacingOccurrences(of: #""DefaultIntentionPolicy": "deny","#, with: ""),
            #"{"Config": {"Datacenter": "dc2", "NodeName": "n"}}"#,
            #"{"Config": {"Datacenter": "dc2"}, "DebugConfig": null}"#,
        ]
        for json in variants {
            let agent = try ConsulAgentSelf.decode(data(json), source: selfSource)
            #expect(agent.defaultIntentionPolicy == nil)
        }
        #expect(try ConsulAgentSelf.decode(data(variants[2]), source: selfSource).datacenter == "dc2")
    }

    @Test("policy \"Allow\" is accepted case-insensitively")
    func allowPolicy() throws {
        let json = #"{"Config": {"Datacenter": "dc1"}, "DebugConfig": {"DefaultIntentionPolicy": "Allow"}}"#
        #expect(try ConsulAgentSelf.decode(data(json), source: selfSource).defaultIntentionPolicy == .allow)
    }

    @Test("errors name the field")
    func errors() throws {
        let cases: [(String, String, String)] = [
            (#"{"DebugConfig": {}}"#, "Config", "required field is missing"),
            (#"{"Config": {}}"#, "Config.Datacenter", "required field is missing"),
            (#"{"Config": {"Datacenter": ""}}"#, "Config.Datacenter", "must not be empty"),
            (#"{"Config": {"Datacenter": 1}}"#, "Config.Datacenter", "expected a string"),
            (#"{"Config": "dc1"}"#, "Config", "expected an object"),
            (#"{"Config": {"Datacenter": "dc1"}, "DebugConfig": {"DefaultIntentionPolicy": "audit"}}"#,
             "DebugConfig.DefaultIntentionPolicy", "\"audit\""),
            (#"{"Config": {"Datacenter": "dc1"}, "DebugConfig": {"DefaultIntentionPolicy": false}}"#,
             "DebugConfig.DefaultIntentionPolicy", "expected a string"),
            (#"{"Config": {"Datacenter": "dc1"}, "DebugConfig": []}"#, "DebugConfig", "expected an object"),
        ]
        for (json, path, words) in cases {
            let error = try #require(configError { try ConsulAgentSelf.decode(data(json), source: selfSource) }, "\(json)")
            #expect(error.path == path, "\(json)")
            #expect(error.message.contains(words), "\(json): \(error.message)")
        }
    }
}

// MARK: - Bodies every decoder must refuse

@Suite("ConsulAPI malformed bodies")
struct ConsulAPIMalformedBodyTests {
    @Test("an HTML error page is reported as not JSON, with a snippet", arguments: ConsulDecoderCase.all)
    func htmlBody(_ decoder: ConsulDecoderCase) throws {
        let error = try #require(configError { try decoder.decode(data(htmlErrorBody)) })
        #expect(error.path == "")
        #expect(error.message.hasPrefix("response is not JSON"))
        #expect(error.message.contains("502 Bad Gateway"))
        #expect(!error.message.contains("\n"))
    }

    @Test("Consul's plain-text error (unknown service ID) is reported as not JSON", arguments: ConsulDecoderCase.all)
    func plainTextBody(_ decoder: ConsulDecoderCase) throws {
        let error = try #require(configError { try decoder.decode(data("unknown service ID: storage-sidecar-proxy")) })
        #expect(error.message == #"response is not JSON: "unknown service ID: storage-sidecar-proxy""#)
    }

    @Test("truncated JSON is refused", arguments: ConsulDecoderCase.all)
    func truncated(_ decoder: ConsulDecoderCase) throws {
        let bodies = [rotationRoots, leafResponse, agentService(), healthResponse, matchResponse, agentSelfWithPolicy]
        for body in bodies {
            let cut = String(body.prefix(body.count / 2))
            let error = try #require(configError { try decoder.decode(data(cut)) })
            #expect(error.message.contains("not valid JSON"), "\(error.message)")
        }
    }

    @Test("an empty or blank body is refused", arguments: ConsulDecoderCase.all)
    func emptyBody(_ decoder: ConsulDecoderCase) throws {
        for body in ["", "  \r\n\t"] {
            let error = try #require(configError { try decoder.decode(data(body)) })
            #expect(error.message.contains("empty response body"))
        }
    }

    @Test("the wrong top-level kind is refused", arguments: ConsulDecoderCase.all)
    func wrongTopLevel(_ decoder: ConsulDecoderCase) throws {
        let error = try #require(configError { try decoder.decode(data(decoder.wrongShape)) })
        #expect(error.message.contains("expected an"), "\(error.message)")
    }

    @Test("a long non-JSON body is cut to 80 characters")
    func snippetLength() throws {
        let body = "Error: " + String(repeating: "x", count: 500)
        let error = try #require(configError { try ConsulCARoots.decode(data(body), source: rootsSource) })
        #expect(error.message.hasSuffix("…\""))
        #expect(error.message.count < 120)
        #expect(error.source == rootsSource)
    }
}

// MARK: - Blocking index

@Suite("ConsulAPI blocking index")
struct ConsulAPIBlockingIndexTests {
    @Test("starts at 0: the first request does not block")
    func initial() {
        let index = BlockingIndex()
        #expect(index.current == 0)
        #expect(!index.isBlocking)
    }

    @Test("follows the response index as it grows, and when it stays the same (timeout)")
    func grows() {
        var index = BlockingIndex()
        #expect(index.next(responseIndex: 42) == 42)
        #expect(index.isBlocking)
        #expect(index.next(responseIndex: 42) == 42)
        #expect(index.next(responseIndex: 57) == 57)
        #expect(index.next(responseIndex: UInt64.max) == UInt64.max)
    }

    @Test("an index that goes backwards resets to 0, then the next response is used")
    func backwards() {
        var index = BlockingIndex()
        index.next(responseIndex: 1000)
        #expect(index.next(responseIndex: 12) == 0)
        #expect(!index.isBlocking)
        #expect(index.next(responseIndex: 12) == 12)
        #expect(index.next(responseIndex: 11) == 0)
        #expect(index.next(responseIndex: 20) == 20)
    }

    @Test("a 0 index from Consul is raised to 1, never a busy loop")
    func zeroResponse() {
        var index = BlockingIndex()
        #expect(index.next(responseIndex: 0) == 1)
        #expect(index.next(responseIndex: 0) == 1, "a server stuck at 0 keeps us blocking on 1")
        #expect(index.next(responseIndex: 0) == 1)
        index.next(responseIndex: 30)
        #expect(index.next(responseIndex: 0) == 0, "0 after 30 went backwards: reset")
        #expect(index.next(responseIndex: 0) == 1)
    }

    @Test("a missing header keeps the index, at least 1")
    func missingHeader() {
        var index = BlockingIndex()
        #expect(index.next(responseIndex: nil) == 1)
        #expect(index.next(responseIndex: 88) == 88)
        #expect(index.next(responseIndex: nil) == 88)
        #expect(index.next(responseIndex: nil) == 88)
        index.next(responseIndex: 3)  // backwards: 0
        #expect(index.next(responseIndex: nil) == 1)
    }

    @Test("reset forgets the index")
    func reset() {
        var index = BlockingIndex(current: 500)
        #expect(index.isBlocking)
        index.reset()
        #expect(index.current == 0)
        #expect(index.next(responseIndex: 499) == 499, "after a reset any index is accepted")
    }

    @Test("a long sequence behaves as Consul's rules say")
    func sequence() {
        let steps: [(UInt64?, UInt64)] = [
            (5, 5), (5, 5), (9, 9), (nil, 9), (2, 0), (2, 2), (0, 0), (0, 1), (1, 1), (nil, 1), (1_000_000, 1_000_000),
        ]
        var index = BlockingIndex()
        for (step, (response, expected)) in steps.enumerated() {
            #expect(index.next(responseIndex: response) == expected, "step \(step): \(String(describing: response))")
        }
    }

    @Test("X-Consul-Index header parsing", arguments: [
        ("42", UInt64(42)), (" 7 ", 7), ("0", 0), ("18446744073709551615", UInt64.max),
    ] as [(String, UInt64)])
    func parseValid(text: String, expected: UInt64) {
        #expect(BlockingIndex.parseHeader(text) == expected)
    }

    @Test("bad X-Consul-Index headers are treated as missing", arguments: [
        nil, "", "  ", "-1", "+5", "abc", "12abc", "1.5", "18446744073709551616", "0x10",
    ] as [String?])
    func parseInvalid(text: String?) {
        #expect(BlockingIndex.parseHeader(text) == nil)
    }
}

// MARK: - Retry backoff

@Suite("ConsulAPI retry backoff")
struct ConsulAPIRetryBackoffTests {
    @Test("doubles from base; randomUnit 1 gives the full value")
    func doubling() {
        var backoff = RetryBackoff(base: 0.5, cap: 60)
        let delays = (0..<6).map { _ in backoff.nextDelay(randomUnit: 1) }
        #expect(delays == [0.5, 1, 2, 4, 8, 16])
        #expect(backoff.attempt == 6)
    }

    @Test("randomUnit 0 gives half, 0.5 gives three quarters")
    func jitterBounds() {
        var low = RetryBackoff(base: 1, cap: 60)
        #expect(low.nextDelay(randomUnit: 0) == 0.5)
        #expect(low.nextDelay(randomUnit: 0) == 1)
        var mid = RetryBackoff(base: 4, cap: 60)
        #expect(mid.nextDelay(randomUnit: 0.5) == 3)
    }

    @Test("every delay lies within [0.5, 1.0] of the capped exponential value")
    func jitterRange() {
        for unit in stride(from: 0.0, through: 1.0, by: 0.125) {
            var backoff = RetryBackoff(base: 0.25, cap: 30)
            for attempt in 0..<12 {
                let ceiling = min(30, 0.25 * pow(2, Double(attempt)))
                let delay = backoff.nextDelay(randomUnit: unit)
                #expect(delay >= ceiling * 0.5 && delay <= ceiling, "unit \(unit) attempt \(attempt)")
            }
        }
    }

    @Test("the cap is reached and held")
    func capReached() {
        var backoff = RetryBackoff(base: 1, cap: 10)
        let delays = (0..<8).map { _ in backoff.nextDelay(randomUnit: 1) }
        #expect(delays == [1, 2, 4, 8, 10, 10, 10, 10])
        #expect(backoff.currentCeiling == 10)
        #expect(backoff.nextDelay(randomUnit: 0) == 5, "jitter still applies at the cap")
    }

    @Test("thousands of failures neither overflow nor exceed the cap")
    func noOverflow() {
        var backoff = RetryBackoff(base: 0.1, cap: 300)
        var last = 0.0
        for _ in 0..<5000 { last = backoff.nextDelay(randomUnit: 1) }
        #expect(last == 300)
        #expect(backoff.attempt < 20, "the exponent stops growing once capped")
    }

    @Test("reset starts again from base")
    func reset() {
        var backoff = RetryBackoff(base: 2, cap: 100)
        for _ in 0..<5 { _ = backoff.nextDelay(randomUnit: 1) }
        backoff.reset()
        #expect(backoff.attempt == 0)
        #expect(backoff.nextDelay(randomUnit: 1) == 2)
        #expect(backoff.nextDelay(randomUnit: 1) == 4)
    }

    @Test("randomUnit outside [0, 1] is clamped; NaN counts as 1", arguments: [
        (-3.0, 0.5), (7.0, 1.0), (Double.nan, 1.0), (Double.infinity, 1.0), (-Double.infinity, 0.5),
    ] as [(Double, Double)])
    func clampedUnit(unit: Double, expected: Double) {
        var backoff = RetryBackoff(base: 1, cap: 10)
        #expect(backoff.nextDelay(randomUnit: unit) == expected)
    }

    @Test("a cap below base is raised to base; a bad base means no delay")
    func oddParameters() {
        var small = RetryBackoff(base: 5, cap: 1)
        #expect(small.cap == 5)
        #expect(small.nextDelay(randomUnit: 1) == 5)
        #expect(small.nextDelay(randomUnit: 1) == 5)
        for base in [0, -1, Double.nan, Double.infinity] {
            var zero = RetryBackoff(base: base, cap: 10)
            #expect(zero.nextDelay(randomUnit: 1) == 0)
            #expect(zero.base == 0)
        }
        var none = RetryBackoff(base: 0, cap: 0)
        #expect(none.nextDelay(randomUnit: 1) == 0)
        var infiniteCap = RetryBackoff(base: 1, cap: .infinity)
        #expect(infiniteCap.cap == 1)
        #expect(infiniteCap.nextDelay(randomUnit: 1) == 1)
    }
}
