import Foundation
import Testing
import TestFixtures
@testable import ConsulAgent

@Suite("Consul connection settings (flags and CONSUL_* environment)")
struct ConsulConnectionSettingsTests {
    typealias Transport = ConsulConnectionSettings.Transport

    @Test("Addresses in every spelling Consul's clients accept", arguments: [
        ("127.0.0.1:8500", Transport.tcp(host: "127.0.0.1", port: 8500), false),
        ("consul.service:8501", .tcp(host: "consul.service", port: 8501), false),
        ("http://10.0.0.5:8500", .tcp(host: "10.0.0.5", port: 8500), false),
        ("https://10.0.0.5:8501", .tcp(host: "10.0.0.5", port: 8501), true),
        ("HTTPS://agent:8501/", .tcp(host: "agent", port: 8501), true),
        ("http://agent", .tcp(host: "agent", port: 80), false),
        ("https://agent", .tcp(host: "agent", port: 443), true),
        ("agent", .tcp(host: "agent", port: 8500), false),
        ("[::1]:8500", .tcp(host: "::1", port: 8500), false),
        ("https://[::1]:8501", .tcp(host: "::1", port: 8501), true),
        ("unix:///var/run/consul.sock", .unix(path: "/var/run/consul.sock"), false),
    ])
    func addresses(text: String, transport: Transport, tls: Bool) throws {
        let (parsed, useTLS) = try ConsulConnectionSettings.parseAddress(text)
        #expect(parsed == transport)
        #expect(useTLS == tls)
    }

    @Test("Malformed addresses are refused with the text in the message", arguments: [
        "", "ftp://agent:21", "unix://relative.sock", "agent:0", "agent:70000", "agent:port",
        "http://agent:8500/v1", "::1:8500x", "http://",
    ])
    func malformedAddresses(text: String) {
        #expect(throws: ConsulSettingsError.self) { try ConsulConnectionSettings.parseAddress(text) }
    }

    @Test("CONSUL_HTTP_SSL=true makes any TCP address https, an explicit http:// too (Consul never reverts to http)")
    func sslFlag() throws {
        let env = ["CONSUL_HTTP_ADDR": "agent:8501", "CONSUL_HTTP_SSL": "true"]
        #expect(try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: env).useTLS)
        let explicit = try ConsulConnectionSettings.resolve(httpAddr: "http://agent:8500", token: nil, tokenFile: nil, environment: env)
        #expect(explicit.useTLS && explicit.transport == .tcp(host: "agent", port: 8500))
        let off = try ConsulConnectionSettings.resolve(httpAddr: "https://agent:8501", token: nil, tokenFile: nil,
                                                       environment: ["CONSUL_HTTP_SSL": "false"])
        #expect(off.useTLS, "https:// stays https")
        for bad in ["yes please", "tRuE", "yes", "on"] {
            #expect(throws: ConsulSettingsError.self) {
                try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: ["CONSUL_HTTP_SSL": bad])
            }
        }
        for good in ["1", "t", "T", "true", "TRUE", "True"] {
            #expect(try ConsulConnectionSettings.resolve(httpAddr: "a:1", token: nil, tokenFile: nil, environment: ["CONSUL_HTTP_SSL": good]).useTLS)
        }
    }

    @Test("The token in Consul's order: -token-file, -token, CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_TOKEN")
    func tokenPrecedence() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("consul-order-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let flagFile = directory.appendingPathComponent("flag").path, envFile = directory.appendingPathComponent("env").path
        try "from-flag-file".write(toFile: flagFile, atomically: true, encoding: .utf8)
        try "from-env-file".write(toFile: envFile, atomically: true, encoding: .utf8)
        let env = ["CONSUL_HTTP_TOKEN": "from-env", "CONSUL_HTTP_TOKEN_FILE": envFile]
        func token(_ flag: String?, _ file: String?, _ environment: [String: String]) throws -> String? {
            try ConsulConnectionSettings.resolve(httpAddr: nil, token: flag, tokenFile: file, environment: environment).readToken()
        }
        #expect(try token("from-flag", flagFile, env) == "from-flag-file")
        #expect(try token("from-flag", nil, env) == "from-flag")
        #expect(try token(nil, nil, env) == "from-env-file")
        #expect(try token(nil, nil, ["CONSUL_HTTP_TOKEN": "from-env"]) == "from-env")
        #expect(try token("", "", env) == "from-env-file", "empty flags count as not given")
    }

    @Test("CONSUL_CAPATH, CONSUL_HTTP_SSL_VERIFY and CONSUL_HTTP_AUTH are read; the summary never shows a secret")
    func moreEnvironment() throws {
        let settings = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: [
            "CONSUL_HTTP_ADDR": "https://agent:8501", "CONSUL_CAPATH": "/etc/consul/ca.d", "CONSUL_HTTP_SSL_VERIFY": "0",
            "CONSUL_HTTP_AUTH": "backup:pa:ss", "CONSUL_HTTP_TOKEN": "secret",
        ])
        #expect(settings.caPath == "/etc/consul/ca.d" && !settings.verifyTLS && settings.httpAuth == "backup:pa:ss")
        #expect(settings.basicAuthorization == "Basic " + Data("backup:pa:ss".utf8).base64EncodedString(), "split at the first colon")
        #expect(settings.summary == "https://agent:8501 (token, basic auth, TLS NOT VERIFIED)")
        #expect(throws: ConsulSettingsError.self) {
            try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: ["CONSUL_HTTP_SSL_VERIFY": "nope"])
        }
        let tenancy = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil,
                                                           environment: ["CONSUL_NAMESPACE": "team-a", "CONSUL_PARTITION": " eu "])
        #expect(tenancy.namespace == "team-a" && tenancy.partition == "eu")
        let verified = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: [:])
        #expect(verified.verifyTLS && verified.httpAuth == nil && verified.basicAuthorization == nil)
        #expect(verified.namespace == nil && verified.partition == nil, "nothing named: no ?ns= (Consul CE refuses it)")
    }

    @Test("Flags beat the environment; the default is 127.0.0.1:8500 over http")
    func precedence() throws {
        let defaults = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: [:])
        #expect(defaults.transport == .tcp(host: "127.0.0.1", port: 8500))
        #expect(!defaults.useTLS)
        #expect(try defaults.readToken() == nil)

        let env = ["CONSUL_HTTP_ADDR": "from-env:8500", "CONSUL_HTTP_TOKEN": "env-token"]
        let flags = try ConsulConnectionSettings.resolve(httpAddr: "from-flag:9500", token: "flag-token", tokenFile: nil, environment: env)
        #expect(flags.transport == .tcp(host: "from-flag", port: 9500))
        #expect(try flags.readToken() == "flag-token")
        let fromEnv = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: env)
        #expect(fromEnv.transport == .tcp(host: "from-env", port: 8500))
        #expect(try fromEnv.readToken() == "env-token")
    }

    @Test("Token files: a -token-file flag beats CONSUL_HTTP_TOKEN; re-read on every call; empty is an error")
    func tokenFiles() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("consul-token-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("token").path
        try "  first-token\n".write(toFile: file, atomically: true, encoding: .utf8)
        let settings = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: file,
                                                            environment: ["CONSUL_HTTP_TOKEN": "env-token"])
        #expect(try settings.readToken() == "first-token")
        try "second-token".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try settings.readToken() == "second-token", "a rotated token file applies to the next request")
        try "\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(throws: ConsulSettingsError.self) { try settings.readToken() }

        let fromEnvFile = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil,
                                                               environment: ["CONSUL_HTTP_TOKEN_FILE": directory.appendingPathComponent("missing").path])
        #expect(throws: ConsulSettingsError.self) { try fromEnvFile.readToken() }
        #expect(!fromEnvFile.summary.contains("first-token"))
    }

    @Test("TLS material from CONSUL_CACERT / CLIENT_CERT / CLIENT_KEY / TLS_SERVER_NAME; cert without key refused")
    func tlsMaterial() throws {
        let env = ["CONSUL_HTTP_ADDR": "https://10.0.0.5:8501", "CONSUL_CACERT": "/etc/consul/ca.pem",
                   "CONSUL_CLIENT_CERT": "/etc/consul/client.pem", "CONSUL_CLIENT_KEY": "/etc/consul/client-key.pem",
                   "CONSUL_TLS_SERVER_NAME": "server.dc1.consul", "CONSUL_HTTP_TOKEN": "secret-token"]
        let settings = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: env)
        #expect(settings.useTLS)
        #expect(settings.caFile == "/etc/consul/ca.pem")
        #expect(settings.clientCertFile == "/etc/consul/client.pem")
        #expect(settings.clientKeyFile == "/etc/consul/client-key.pem")
        #expect(settings.tlsServerName == "server.dc1.consul")
        #expect(settings.summary == "https://10.0.0.5:8501 (token)", "the token itself never appears")
        var halfPair = env
        halfPair["CONSUL_CLIENT_KEY"] = nil
        #expect(throws: ConsulSettingsError.self) {
            try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: halfPair)
        }
    }

    @Test("-sidecar-for finds exactly the connect-proxy whose DestinationServiceID matches")
    func sidecarLookup() throws {
        let body = Data("""
        {"storage-1": {"ID": "storage-1", "Service": "storage", "Port": 8080},
         "storage-1-sidecar-proxy": {"Kind": "connect-proxy", "ID": "storage-1-sidecar-proxy", "Service": "storage-sidecar-proxy",
                                     "Proxy": {"DestinationServiceName": "storage", "DestinationServiceID": "storage-1"}},
         "storage-2-sidecar-proxy": {"Kind": "connect-proxy", "ID": "storage-2-sidecar-proxy", "Service": "storage-sidecar-proxy",
                                     "Proxy": {"DestinationServiceName": "storage", "DestinationServiceID": "storage-2"}},
         "gateway": {"Kind": "mesh-gateway", "ID": "gateway", "Proxy": {"DestinationServiceID": "storage-1"}},
         "extra-proxy": {"Kind": "connect-proxy", "ID": "extra-proxy", "Proxy": {"DestinationServiceID": "storage-2"}}}
        """.utf8)
        #expect(try ConsulProxy.sidecarProxyIDs(in: body, for: "storage-1") == ["storage-1-sidecar-proxy"])
        #expect(try ConsulProxy.sidecarProxyIDs(in: body, for: "storage-2") == ["extra-proxy", "storage-2-sidecar-proxy"])
        #expect(try ConsulProxy.sidecarProxyIDs(in: body, for: "storage") == [], "a service name is not a service ID")
        #expect(try ConsulProxy.sidecarProxyIDs(in: body, for: "Storage-1") == ["storage-1-sidecar-proxy"], "any letter case")
        #expect(throws: (any Error).self) { try ConsulProxy.sidecarProxyIDs(in: Data("[1,2]".utf8), for: "x") }
    }
}
