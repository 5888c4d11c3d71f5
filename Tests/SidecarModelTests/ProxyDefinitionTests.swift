import Foundation
import Testing
@testable import SidecarModel

private func decode(_ json: String) throws -> ProxyDefinition {
    try ProxyDefinition.decode(Data(json.utf8), source: "test.json")
}

/// A `{"service": {...}}` connect-proxy file whose `proxy` object holds `proxyFields` after
/// `destination_service_name`.
private func proxyFile(_ proxyFields: String = "", service serviceFields: String = "") -> String {
    #"{"service":{"kind":"connect-proxy","name":"web-sidecar-proxy","#
        + serviceFields
        + #""proxy":{"destination_service_name":"web""#
        + (proxyFields.isEmpty ? "" : "," + proxyFields)
        + "}}}"
}

/// A JSON document that must be refused, where, and with what words in the message.
struct ProxyConfigErrorCase: Sendable, CustomTestStringConvertible {
    var note: String
    var json: String
    var path: String
    var messageContains: [String]

    init(_ note: String, _ json: String, path: String, _ messageContains: String...) {
        self.note = note
        self.json = json
        self.path = path
        self.messageContains = messageContains
    }

    var testDescription: String { note }
}

@Suite("ProxyDefinition")
struct ProxyDefinitionTests {
    // MARK: - Accepted shapes

    @Test("snake_case agent config file form, every field")
    func snakeCaseFile() throws {
        let json = #"""
        {
          "service": {
            "kind": "connect-proxy",
            "id": "web-proxy-1",
            "name": "web-sidecar-proxy",
            "address": "10.0.0.5",
            "port": 21000,
            "proxy": {
              "destination_service_name": "web",
              "destination_service_id": "web-1",
              "local_service_address": "127.0.0.2",
              "local_service_port": 8080,
              "config": {
                "bind_address": "0.0.0.0",
                "bind_port": 21001,
                "local_connect_timeout_ms": 500,
                "handshake_timeout_ms": 3000,
                "protocol": "HTTP"
              },
              "upstreams": [
                {
                  "destination_type": "service",
                  "destination_name": "storage",
                  "destination_namespace": "default",
                  "destination_partition": "default",
                  "datacenter": "dc2",
                  "local_bind_address": "127.0.0.3",
                  "local_bind_port": 9191,
                  "config": { "connect_timeout_ms": 2500 }
                },
                { "destination_name": "metrics", "local_bind_port": 9192 }
              ]
            }
          }
        }
        """#
        let definition = try decode(json)
        let expected = ProxyDefinition(
            id: "web-proxy-1", name: "web-sidecar-proxy", address: "10.0.0.5", port: 21000,
            destinationServiceName: "web", destinationServiceID: "web-1",
            localServiceAddress: "127.0.0.2", localServicePort: 8080,
            config: ProxyConfig(bindAddress: "0.0.0.0", bindPort: 21001, localConnectTimeoutMs: 500,
                                handshakeTimeoutMs: 3000, protocol: "http"),
            upstreams: [
                Upstream(destinationName: "storage", tenancy: .default,
                         datacenter: "dc2", localBindAddress: "127.0.0.3", localBindPort: 9191, connectTimeoutMs: 2500),
                Upstream(destinationName: "metrics", tenancy: .default,
                         datacenter: nil, localBindAddress: "127.0.0.1", localBindPort: 9192, connectTimeoutMs: 10000),
            ]
        )
        #expect(definition == expected)
        #expect(definition.upstreams.map(\.listenerKey) == ["127.0.0.3:9191", "127.0.0.1:9192"])
    }

    @Test("PascalCase HTTP API form (bare object)")
    func pascalCaseAPI() throws {
        let json = #"""
        {
          "Kind": "connect-proxy",
          "Name": "backup-agent-sidecar-proxy",
          "Port": 21000,
          "Proxy": {
            "DestinationServiceName": "backup-agent",
            "LocalServicePort": 7000,
            "Upstreams": [
              { "DestinationName": "storage", "LocalBindPort": 9000, "Config": { "connect_timeout_ms": 2500 } }
            ]
          }
        }
        """#
        let definition = try decode(json)
        #expect(definition.name == "backup-agent-sidecar-proxy")
        #expect(definition.id == "backup-agent-sidecar-proxy")
        #expect(definition.port == 21000)
        #expect(definition.destinationServiceName == "backup-agent")
        #expect(definition.destinationServiceID == nil)
        #expect(definition.localServicePort == 7000)
        #expect(definition.upstreams == [
            Upstream(destinationName: "storage", tenancy: .default,
                     datacenter: nil, localBindAddress: "127.0.0.1", localBindPort: 9000, connectTimeoutMs: 2500),
        ])
    }

    @Test("PascalCase and snake_case spellings decode to the same definition")
    func spellingsAgree() throws {
        let snake = #"{"kind":"connect-proxy","name":"p","port":21000,"proxy":{"destination_service_name":"web","local_service_port":80,"config":{"bind_port":21001,"handshake_timeout_ms":5},"upstreams":[{"destination_name":"db","datacenter":"dc2","local_bind_port":9000}]}}"#
        let pascal = #"{"Kind":"connect-proxy","Name":"p","Port":21000,"Proxy":{"DestinationServiceName":"web","LocalServicePort":80,"Config":{"BindPort":21001,"HandshakeTimeoutMs":5},"Upstreams":[{"DestinationName":"db","Datacenter":"dc2","LocalBindPort":9000}]}}"#
        let kebab = #"{"kind":"connect-proxy","name":"p","port":21000,"proxy":{"destination-service-name":"web","local-service-port":80,"config":{"bind-port":21001,"handshake-timeout-ms":5},"upstreams":[{"destination-name":"db","datacenter":"dc2","local-bind-port":9000}]}}"#
        let a = try decode(snake)
        #expect(try decode(pascal) == a)
        #expect(try decode(kebab) == a)
        #expect(a.config.handshakeTimeoutMs == 5)
        #expect(a.upstreams.first?.datacenter == "dc2")
    }

    @Test("{\"services\": [...]} with exactly one definition")
    func servicesArray() throws {
        let json = #"{"services":[{"kind":"connect-proxy","name":"p","proxy":{"destination_service_name":"web"}}]}"#
        let definition = try decode(json)
        #expect(definition.name == "p")
        #expect(definition.destinationServiceName == "web")
    }

    @Test("services array with zero or several definitions is refused", arguments: [0, 2, 3])
    func servicesArrayCount(count: Int) {
        let one = #"{"kind":"connect-proxy","name":"p","proxy":{"destination_service_name":"web"}}"#
        let json = #"{"services":["# + Array(repeating: one, count: count).joined(separator: ",") + "]}"
        let error = #expect(throws: ConfigError.self) { try decode(json) }
        #expect(error?.path == "services")
        #expect(error?.message.contains("exactly one") == true)
        #expect(error?.message.contains("found \(count)") == true)
    }

    @Test("app service with connect.sidecar_service derives the sidecar like Consul")
    func sidecarService() throws {
        let json = #"""
        {
          "service": {
            "name": "web",
            "id": "web-1",
            "port": 8080,
            "tags": ["primary"],
            "connect": {
              "sidecar_service": {
                "proxy": {
                  "upstreams": [
                    { "destination_name": "db", "local_bind_port": 9000 },
                    { "destination_name": "cache", "local_bind_port": 9001, "local_bind_address": "127.0.0.5" }
                  ]
                }
              }
            }
          }
        }
        """#
        let definition = try decode(json)
        #expect(definition.name == "web-sidecar-proxy")
        #expect(definition.id == "web-1-sidecar-proxy")
        #expect(definition.destinationServiceName == "web")
        #expect(definition.destinationServiceID == "web-1")
        #expect(definition.localServiceAddress == "127.0.0.1")
        #expect(definition.localServicePort == 8080)
        #expect(definition.address == "0.0.0.0")
        #expect(definition.port == nil)
        #expect(definition.config == ProxyConfig())
        #expect(definition.upstreams.map(\.destinationName) == ["db", "cache"])
        #expect(definition.upstreams.map(\.listenerKey) == ["127.0.0.1:9000", "127.0.0.5:9001"])
    }

    @Test("empty sidecar_service block: id from name, no upstreams")
    func emptySidecarService() throws {
        let definition = try decode(#"{"service":{"name":"api","port":7000,"connect":{"sidecar_service":{}}}}"#)
        #expect(definition.name == "api-sidecar-proxy")
        #expect(definition.id == "api-sidecar-proxy")
        #expect(definition.destinationServiceID == "api")
        #expect(definition.localServicePort == 7000)
        #expect(definition.upstreams.isEmpty)
    }

    @Test("sidecar_service overrides: name, id, port, local service")
    func sidecarServiceOverrides() throws {
        let json = #"{"Name":"api","Port":7000,"Connect":{"SidecarService":{"Name":"custom","ID":"custom-1","Port":21005,"Address":"10.1.1.1","Proxy":{"LocalServiceAddress":"127.0.0.9","LocalServicePort":7001,"Config":{"protocol":"grpc"}}}}}"#
        let definition = try decode(json)
        #expect(definition.name == "custom")
        #expect(definition.id == "custom-1")
        #expect(definition.port == 21005)
        #expect(definition.address == "10.1.1.1")
        #expect(definition.localServiceAddress == "127.0.0.9")
        #expect(definition.localServicePort == 7001)
        #expect(definition.config.protocol == "grpc")
        #expect(definition.destinationServiceName == "api")
    }

    @Test("sidecar_service: an empty local_service_address means the default, as for a registration")
    func sidecarServiceEmptyLocalAddress() throws {
        // Consul fills an empty LocalServiceAddress with 127.0.0.1 for sidecar_service
        // (agent/sidecar_service.go); decodeProxyRegistration already maps "" to the default.
        let json = #"{"service":{"name":"api","port":7000,"connect":{"sidecar_service":{"proxy":{"local_service_address":""}}}}}"#
        #expect(try decode(json).localServiceAddress == "127.0.0.1")
        let registration = proxyFile(#""local_service_address":"""#)
        #expect(try decode(registration).localServiceAddress == "127.0.0.1")
    }

    @Test("unknown fields are ignored")
    func unknownFieldsIgnored() throws {
        let plain = try decode(proxyFile(#""upstreams":[{"destination_name":"db","local_bind_port":9000}]"#))
        let noisy = try decode(proxyFile(
            #""mode":"transparent","transparent_proxy":{"outbound_listener_port":15001},"expose":{"checks":true},"mesh_gateway":{"mode":"local"},"config":{"envoy_extra":"x","unknown":[1,2]},"upstreams":[{"destination_name":"db","local_bind_port":9000,"mesh_gateway":{"mode":"remote"},"config":{"limits":{"max_connections":5}}}]"#,
            service: #""tags":["a"],"meta":{"k":"v"},"check":{"tcp":"localhost:21000","interval":"10s"},"weights":{"passing":1},"enable_tag_override":false,"token":"","#
        ))
        #expect(noisy == plain)
    }

    @Test("null is the same as absent")
    func nullsAreAbsent() throws {
        let json = #"""
        {"service":{"kind":"connect-proxy","id":null,"name":"p","address":null,"port":null,
          "proxy":{"destination_service_name":"web","destination_service_id":null,"local_service_address":null,
                   "local_service_port":null,"config":null,"upstreams":null}}}
        """#
        let definition = try decode(json)
        #expect(definition.id == "p")
        #expect(definition.address == "0.0.0.0")
        #expect(definition.port == nil)
        #expect(definition.destinationServiceID == nil)
        #expect(definition.localServiceAddress == "127.0.0.1")
        #expect(definition.localServicePort == nil)
        #expect(definition.config == ProxyConfig())
        #expect(definition.upstreams.isEmpty)

        let upstream = try decode(proxyFile(
            #""config":{"bind_address":null,"bind_port":null,"protocol":null,"local_connect_timeout_ms":null},"upstreams":[{"destination_name":"db","destination_type":null,"destination_namespace":null,"datacenter":null,"local_bind_address":null,"local_bind_port":9000,"config":null}]"#
        ))
        #expect(upstream.config == ProxyConfig())
        #expect(upstream.upstreams == [
            Upstream(destinationName: "db", tenancy: .default,
                     datacenter: nil, localBindAddress: "127.0.0.1", localBindPort: 9000, connectTimeoutMs: 10000),
        ])
    }

    @Test("defaults for everything optional")
    func defaults() throws {
        let definition = try decode(#"{"service":{"kind":"connect-proxy","name":"p","proxy":{"destination_service_name":"web","upstreams":[{"destination_name":"db","local_bind_port":9000}]}}}"#)
        #expect(definition.id == "p")
        #expect(definition.address == "0.0.0.0")
        #expect(definition.port == nil)
        #expect(definition.localServiceAddress == "127.0.0.1")
        #expect(definition.localServicePort == nil)
        #expect(definition.config.bindAddress == nil)
        #expect(definition.config.bindPort == nil)
        #expect(definition.config.localConnectTimeoutMs == 1000)
        #expect(definition.config.handshakeTimeoutMs == 10000)
        #expect(definition.config.protocol == "tcp")
        #expect(definition.publicBindAddress == "0.0.0.0")
        #expect(definition.publicBindPort == nil)
        let upstream = try #require(definition.upstreams.first)
        #expect(upstream.destinationNamespace == "default")
        #expect(upstream.destinationPartition == "default")
        #expect(upstream.datacenter == nil)
        #expect(upstream.localBindAddress == "127.0.0.1")
        #expect(upstream.connectTimeoutMs == 10000)
    }

    @Test("empty strings fall back to the defaults")
    func emptyStringsAreDefaults() throws {
        let definition = try decode(proxyFile(
            #""local_service_address":"","upstreams":[{"destination_name":"db","destination_namespace":"","destination_partition":"","datacenter":"","local_bind_address":"","local_bind_port":9000}]"#,
            service: #""address":"","#
        ))
        #expect(definition.address == "0.0.0.0")
        #expect(definition.localServiceAddress == "127.0.0.1")
        #expect(definition.upstreams.first?.destinationNamespace == "default")
        #expect(definition.upstreams.first?.destinationPartition == "default")
        #expect(definition.upstreams.first?.datacenter == nil)
        #expect(definition.upstreams.first?.localBindAddress == "127.0.0.1")
    }

    @Test("proxy config bind_address/bind_port override the registration's address/port")
    func bindOverride() throws {
        let plain = try decode(proxyFile(service: #""address":"10.0.0.5","port":21000,"#))
        #expect(plain.publicBindAddress == "10.0.0.5")
        #expect(plain.publicBindPort == 21000)

        let overridden = try decode(proxyFile(#""config":{"bind_address":"127.0.0.1","bind_port":21001}"#,
                                              service: #""address":"10.0.0.5","port":21000,"#))
        #expect(overridden.address == "10.0.0.5")
        #expect(overridden.port == 21000)
        #expect(overridden.publicBindAddress == "127.0.0.1")
        #expect(overridden.publicBindPort == 21001)

        let portOnly = try decode(proxyFile(#""config":{"bind_port":21002}"#))
        #expect(portOnly.publicBindAddress == "0.0.0.0")
        #expect(portOnly.publicBindPort == 21002)
    }

    @Test("numeric strings are accepted inside proxy config maps")
    func numericStringsInConfig() throws {
        let definition = try decode(proxyFile(
            #""config":{"bind_port":"21001","local_connect_timeout_ms":"750","handshake_timeout_ms":" 4000 "},"upstreams":[{"destination_name":"db","local_bind_port":9000,"config":{"connect_timeout_ms":"2500"}}]"#
        ))
        #expect(definition.publicBindPort == 21001)
        #expect(definition.config.localConnectTimeoutMs == 750)
        #expect(definition.config.handshakeTimeoutMs == 4000)
        #expect(definition.upstreams.first?.connectTimeoutMs == 2500)
    }

    @Test("protocol is case-insensitive and normalized", arguments: [
        ("tcp", "tcp"), ("TCP", "tcp"), ("http", "http"), ("Http2", "http2"), ("gRPC", "grpc"),
    ])
    func protocols(raw: String, normalized: String) throws {
        let definition = try decode(proxyFile(#""config":{"protocol":"\#(raw)"}"#))
        #expect(definition.config.protocol == normalized)
    }

    @Test("empty Upstreams list")
    func emptyUpstreams() throws {
        let definition = try decode(#"{"Kind":"connect-proxy","Name":"p","Proxy":{"DestinationServiceName":"web","Upstreams":[]}}"#)
        #expect(definition.upstreams.isEmpty)
    }

    @Test("the same port on different bind addresses is two listeners, not a duplicate")
    func sameportDifferentAddress() throws {
        let definition = try decode(proxyFile(
            #""upstreams":[{"destination_name":"a","local_bind_port":9000},{"destination_name":"b","local_bind_address":"127.0.0.2","local_bind_port":9000}]"#
        ))
        #expect(definition.upstreams.map(\.listenerKey) == ["127.0.0.1:9000", "127.0.0.2:9000"])
    }

    @Test("port bounds 1 and 65535 are accepted")
    func portBounds() throws {
        #expect(try decode(#"{"kind":"connect-proxy","name":"p","port":1,"proxy":{"destination_service_name":"w"}}"#).port == 1)
        #expect(try decode(#"{"kind":"connect-proxy","name":"p","port":65535,"proxy":{"destination_service_name":"w"}}"#).port == 65535)
    }

    // MARK: - Refused documents

    static let errorCases: [ProxyConfigErrorCase] = [
        .init("invalid JSON", #"{"service": {"#, path: "", "not valid JSON"),
        .init("empty document", "", path: "", "not valid JSON"),
        .init("trailing garbage", #"{"service":{}} x"#, path: "", "not valid JSON"),
        .init("top-level array", #"[{"kind":"connect-proxy"}]"#, path: "", "expected an object", "array"),
        .init("top-level string", #""connect-proxy""#, path: "", "expected an object", "string"),
        .init("service is not an object", #"{"service":"web"}"#, path: "service", "expected an object", "string"),
        .init("missing name", #"{"service":{"kind":"connect-proxy","proxy":{"destination_service_name":"web"}}}"#,
              path: "service.name", "required"),
        .init("name is not a string", #"{"service":{"kind":"connect-proxy","name":7,"proxy":{"destination_service_name":"web"}}}"#,
              path: "service.name", "expected a string", "number"),
        .init("missing proxy", #"{"service":{"kind":"connect-proxy","name":"p"}}"#, path: "service.proxy", "required"),
        .init("null proxy", #"{"service":{"kind":"connect-proxy","name":"p","proxy":null}}"#,
              path: "service.proxy", "required"),
        .init("proxy is an array", #"{"service":{"kind":"connect-proxy","name":"p","proxy":[]}}"#,
              path: "service.proxy", "expected an object", "array"),
        .init("missing destination_service_name", #"{"service":{"kind":"connect-proxy","name":"p","proxy":{}}}"#,
              path: "service.proxy.destination_service_name", "required"),
        .init("empty destination_service_name", #"{"service":{"kind":"connect-proxy","name":"p","proxy":{"destination_service_name":""}}}"#,
              path: "service.proxy.destination_service_name", "empty"),
        .init("PascalCase errors use the canonical path", #"{"Kind":"connect-proxy","Name":"p","Proxy":{}}"#,
              path: "proxy.destination_service_name", "required"),
        .init("wrong kind", #"{"service":{"kind":"mesh-gateway","name":"gw","proxy":{"destination_service_name":"web"}}}"#,
              path: "service.kind", "mesh-gateway", "connect-proxy"),
        .init("kind with other case", #"{"service":{"kind":"Connect-Proxy","name":"p","proxy":{"destination_service_name":"web"}}}"#,
              path: "service.kind", "Connect-Proxy"),
        .init("kind is not a string", #"{"service":{"kind":1,"name":"p"}}"#, path: "service.kind", "expected a string"),
        .init("neither kind nor sidecar_service", #"{"service":{"name":"web","port":8080}}"#,
              path: "service", "connect-proxy", "sidecar_service"),
        .init("connect without sidecar_service", #"{"service":{"name":"web","port":8080,"connect":{"native":true}}}"#,
              path: "service", "sidecar_service"),
        .init("sidecar_service parent without name", #"{"service":{"port":8080,"connect":{"sidecar_service":{}}}}"#,
              path: "service.name", "required"),
        .init("port 0", proxyFile(service: #""port":0,"#), path: "service.port", "0", "1-65535"),
        .init("port 70000", proxyFile(service: #""port":70000,"#), path: "service.port", "70000", "1-65535"),
        .init("port -1", proxyFile(service: #""port":-1,"#), path: "service.port", "-1", "1-65535"),
        .init("port 65536", proxyFile(service: #""port":65536,"#), path: "service.port", "65536"),
        .init("port as non-numeric string", proxyFile(service: #""port":"x","#), path: "service.port", "integer", "\"x\""),
        .init("port fractional", proxyFile(service: #""port":21000.5,"#), path: "service.port", "integer", "number"),
        .init("port boolean", proxyFile(service: #""port":true,"#), path: "service.port", "integer", "boolean"),
        .init("local_service_port out of range", proxyFile(#""local_service_port":0"#),
              path: "service.proxy.local_service_port", "1-65535"),
        .init("sidecar parent port out of range", #"{"service":{"name":"web","port":99999,"connect":{"sidecar_service":{}}}}"#,
              path: "service.port", "99999"),
        .init("sidecar_service port out of range", #"{"service":{"name":"web","port":80,"connect":{"sidecar_service":{"port":0}}}}"#,
              path: "service.connect.sidecar_service.port", "1-65535"),
        .init("upstreams is not an array", proxyFile(#""upstreams":{"destination_name":"db"}"#),
              path: "service.proxy.upstreams", "expected an array", "object"),
        .init("unknown protocol", proxyFile(#""config":{"protocol":"udp"}"#), path: "service.proxy.config.protocol", "udp"),
        .init("protocol not a string", proxyFile(#""config":{"protocol":7}"#), path: "service.proxy.config.protocol", "expected a string"),
        .init("negative local_connect_timeout_ms", proxyFile(#""config":{"local_connect_timeout_ms":-5}"#),
              path: "service.proxy.config.local_connect_timeout_ms", "greater than 0"),
        .init("zero handshake_timeout_ms", proxyFile(#""config":{"handshake_timeout_ms":0}"#),
              path: "service.proxy.config.handshake_timeout_ms", "greater than 0"),
        .init("non-numeric timeout string", proxyFile(#""config":{"handshake_timeout_ms":"soon"}"#),
              path: "service.proxy.config.handshake_timeout_ms", "\"soon\""),
        .init("bind_port out of range", proxyFile(#""config":{"bind_port":"70000"}"#),
              path: "service.proxy.config.bind_port", "70000"),
        .init("config is not an object", proxyFile(#""config":"x""#), path: "service.proxy.config", "expected an object"),
        .init("services is not an array", #"{"services":{"name":"x"}}"#, path: "services", "expected an array"),
        .init("error inside services[0]", #"{"services":[{"kind":"connect-proxy","proxy":{"destination_service_name":"w"}}]}"#,
              path: "services[0].name", "required"),
    ]

    /// One upstream the sidecar cannot serve is skipped with its reason; the registration and
    /// its other upstreams stand (issue 17: never fail the whole proxy for one upstream).
    static let skippedUpstreamCases: [ProxyConfigErrorCase] = [
        .init("upstream missing destination_name",
              proxyFile(#""upstreams":[{"destination_name":"a","local_bind_port":9000},{"local_bind_port":9001}]"#),
              path: "service.proxy.upstreams[1].destination_name", "required"),
        .init("upstream empty destination_name", proxyFile(#""upstreams":[{"destination_name":"","local_bind_port":9000}]"#),
              path: "service.proxy.upstreams[0].destination_name", "empty"),
        .init("upstream local_bind_port out of range", proxyFile(#""upstreams":[{"destination_name":"db","local_bind_port":70000}]"#),
              path: "service.proxy.upstreams[0].local_bind_port", "1-65535"),
        .init("upstream unix socket, relative path", proxyFile(#""upstreams":[{"destination_name":"db","local_bind_socket_path":"db.sock"}]"#),
              path: "service.proxy.upstreams[0].local_bind_socket_path", "absolute"),
        .init("upstream unix socket, bad mode", proxyFile(#""upstreams":[{"destination_name":"db","local_bind_socket_path":"/run/db.sock","local_bind_socket_mode":"rw-rw----"}]"#),
              path: "service.proxy.upstreams[0].local_bind_socket_mode", "octal"),
        .init("allowed_uids entry of the wrong type", proxyFile(#""upstreams":[{"destination_name":"db","local_bind_port":9000,"config":{"allowed_uids":[true]}}]"#),
              path: "service.proxy.upstreams[0].config.allowed_uids[0]", "user or group"),
        .init("duplicate local bind",
              proxyFile(#""upstreams":[{"destination_name":"first","local_bind_port":9000},{"destination_name":"second","local_bind_address":"127.0.0.1","local_bind_port":9000}]"#),
              path: "service.proxy.upstreams[1].local_bind_port", "127.0.0.1:9000", "\"first\""),
        .init("duplicate local bind, third entry",
              proxyFile(#""upstreams":[{"destination_name":"a","local_bind_port":9000},{"destination_name":"b","local_bind_port":9001},{"destination_name":"c","local_bind_port":"9001"}]"#),
              path: "service.proxy.upstreams[2].local_bind_port", "127.0.0.1:9001", "\"b\""),
        .init("prepared query upstream",
              proxyFile(#""upstreams":[{"destination_type":"prepared_query","destination_name":"q","local_bind_port":9000}]"#),
              path: "service.proxy.upstreams[0].destination_type", "prepared_query"),
        .init("negative upstream connect_timeout_ms",
              proxyFile(#""upstreams":[{"destination_name":"db","local_bind_port":9000,"config":{"connect_timeout_ms":-1}}]"#),
              path: "service.proxy.upstreams[0].config.connect_timeout_ms", "greater than 0"),
        .init("upstream with LocalBindPort 0 (Go's zero value: none)", proxyFile(#""upstreams":[{"destination_name":"db","local_bind_port":0}]"#),
              path: "service.proxy.upstreams[0].local_bind_port", "transparent-proxy"),
        .init("upstream without a local bind (transparent proxy)", proxyFile(#""upstreams":[{"destination_name":"db"},{"destination_name":"ok","local_bind_port":9000}]"#),
              path: "service.proxy.upstreams[0].local_bind_port", "transparent-proxy"),
        .init("peered upstream", proxyFile(#""upstreams":[{"destination_name":"db","destination_peer":"dc-west","local_bind_port":9000}]"#),
              path: "service.proxy.upstreams[0].destination_peer", "dc-west", "peering"),
        .init("upstream in another namespace", proxyFile(#""upstreams":[{"destination_name":"db","destination_namespace":"ops","local_bind_port":9000}]"#),
              path: "service.proxy.upstreams[0].destination_namespace", "\"ops\"", "Enterprise"),
        .init("upstream in another partition", proxyFile(#""upstreams":[{"destination_name":"db","destination_partition":"p1","local_bind_port":9000}]"#),
              path: "service.proxy.upstreams[0].destination_partition", "\"p1\""),
    ]

    @Test("an upstream that cannot be served is skipped with its field path; the rest of the registration stands",
          arguments: skippedUpstreamCases)
    func skippedUpstream(_ testCase: ProxyConfigErrorCase) throws {
        let definition = try decode(testCase.json)
        #expect(definition.skippedUpstreams.count == 1, "\(definition.skippedUpstreams)")
        let line = definition.skippedUpstreams.first ?? ""
        #expect(line.contains("skipped: \(testCase.path):"), "\(line)")
        for needle in testCase.messageContains {
            #expect(line.contains(needle), "\"\(line)\" lacks \"\(needle)\"")
        }
        #expect(!definition.upstreams.contains { line.contains("upstream \"\($0.destinationName)\" skipped") }, "the skipped one has no listener")
    }

    @Test("A registration's Namespace and Partition are its tenancy; names that are not a tenancy are refused whole")
    func nonDefaultTenancy() throws {
        func json(_ field: String, _ value: String) -> String {
            #"{"Kind":"connect-proxy","Service":"p","ID":"p","Port":21000,"\#(field)":"\#(value)","Proxy":{"DestinationServiceName":"web"}}"#
        }
        #expect(try decode(json("Namespace", "team-a")).tenancy == Tenancy(namespace: "team-a"))
        #expect(try decode(json("Partition", "p1")).tenancy == Tenancy(partition: "p1"))
        #expect(try decode(#"{"Kind":"connect-proxy","Service":"p","ID":"p","Port":1,"Namespace":"default","Partition":"","Proxy":{"DestinationServiceName":"web"}}"#).tenancy == .default)
        #expect(try decode(#"{"Kind":"connect-proxy","Service":"p","ID":"p","Port":1,"Proxy":{"DestinationServiceName":"web"}}"#).tenancy == nil)
        for (field, value) in [("Namespace", "*"), ("Partition", "a/b"), ("Namespace", "ns%2F"), ("Namespace", "x y")] {
            let error = #expect(throws: ConfigError.self) { try decode(json(field, value)) }
            #expect(error?.path == field.lowercased(), "\(String(describing: error))")
        }
    }

    @Test("Opaque config maps: a key in two spellings after a central-config merge takes the documented one")
    func duplicateConfigKeys() throws {
        let merged = try decode(proxyFile(#""config":{"protocol":"http","Protocol":"tcp"},"upstreams":[{"destination_name":"db","local_bind_port":9000,"config":{"connect_timeout_ms":2500,"ConnectTimeoutMs":10}}]"#))
        #expect(merged.config.protocol == "http" && merged.upstreams.first?.connectTimeoutMs == 2500)
        let error = #expect(throws: ConfigError.self) { try decode(proxyFile(#""config":{"Protocol":"http","PROTOCOL":"tcp"}"#)) }
        #expect(error?.message.contains("more than once") == true, "neither spelled as documented: still ambiguous")
        #expect(throws: ConfigError.self) { try decode(#"{"service":{"kind":"connect-proxy","name":"p","Name":"q","proxy":{"destination_service_name":"web"}}}"#) }
    }

    @Test("refused documents name the field path", arguments: errorCases)
    func refused(_ testCase: ProxyConfigErrorCase) {
        let error = #expect(throws: ConfigError.self) { try decode(testCase.json) }
        guard let error else { return }
        #expect(error.source == "test.json")
        #expect(error.path == testCase.path)
        #expect(!error.message.isEmpty)
        for needle in testCase.messageContains {
            #expect(error.message.contains(needle), "message \"\(error.message)\" lacks \"\(needle)\"")
        }
    }

    @Test("ConfigError.description carries the file name, path and message")
    func errorDescription() throws {
        let error = #expect(throws: ConfigError.self) { try decode(proxyFile(service: #""port":0,"#)) }
        let text = try #require(error).description
        #expect(text.contains("test.json"))
        #expect(text.contains("service.port"))
        #expect(text.contains("1-65535"))
        #expect(text == "test.json: service.port: port 0 is outside 1-65535")

        let syntax = #expect(throws: ConfigError.self) { try decode("{") }
        let syntaxText = try #require(syntax).description
        #expect(syntaxText.hasPrefix("test.json: not valid JSON"))
    }

    @Test("load(path:) reports unreadable files with the path as source")
    func loadMissingFile() {
        let path = "/nonexistent/dir/proxy-\(UUID().uuidString).json"
        let error = #expect(throws: ConfigError.self) { try ProxyDefinition.load(path: path) }
        #expect(error?.source == path)
        #expect(error?.description.contains(path) == true)
    }

    @Test("load(path:) decodes a file on disk")
    func loadFile() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("proxy-\(UUID().uuidString).json")
        try Data(proxyFile().utf8).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        #expect(try ProxyDefinition.load(path: url.path).name == "web-sidecar-proxy")
    }
}
