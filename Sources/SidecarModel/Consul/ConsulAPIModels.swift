import FoundationEssentials

// Decoders for the Consul HTTP API responses the sidecar consumes in Consul mode. Pure: bytes
// in, values or a `ConfigError` (source = the request, path = the field) out. Field names are
// matched the way `ConfigNode` matches them (case and underscores ignored), nulls count as
// absent and unknown fields are ignored, so newer Consul versions that add fields still decode.
//
// This file: the shared body check, CA roots, leaf certificate, agent/self.
// ConsulServiceModels.swift: agent service, health/connect, intention match.
// BlockingIndex.swift: blocking-query index and retry backoff rules.

/// Parsing shared by every Consul response decoder.
enum ConsulResponseBody {
    /// The top-level node of a response body. Bodies that are not JSON at all (an HTML page
    /// from a proxy in between, Consul's plain-text 4xx/5xx messages such as
    /// `unknown service ID: web`) are reported with a snippet of what arrived instead of a
    /// JSON parser message.
    static func root(_ data: Data, source: String) throws -> ConfigNode {
        guard let first = data.first(where: { !isJSONWhitespace($0) }) else {
            throw ConfigError(source: source, path: "", message: "empty response body; expected JSON")
        }
        guard first == UInt8(ascii: "{") || first == UInt8(ascii: "[") else {
            throw ConfigError(source: source, path: "", message: "response is not JSON: \(snippet(data))")
        }
        return ConfigNode(value: try JSONValue.parse(data, source: source), path: "", source: source)
    }

    private static func isJSONWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
    }

    /// At most 80 characters of the body on one line, quoted.
    static func snippet(_ data: Data) -> String {
        let text = String(decoding: data.prefix(400), as: UTF8.self)
        let oneLine = text.split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
        let limit = 80
        return oneLine.count > limit ? "\"\(oneLine.prefix(limit))…\"" : "\"\(oneLine)\""
    }
}

/// Joins PEM blocks so each starts on its own line.
private func joinPEM(_ blocks: [String]) -> String {
    blocks.filter { !$0.isEmpty }.map { $0.hasSuffix("\n") ? $0 : $0 + "\n" }.joined()
}

// MARK: - GET /v1/agent/connect/ca/roots

/// One CA root from `/v1/agent/connect/ca/roots`.
package struct ConsulCARoot: Equatable, Sendable {
    /// Consul's root ID (a colon-hex fingerprint of the certificate).
    package var id: String
    package var name: String
    /// The certificate's serial, truncated to 64 bits by Consul (`SerialNumber.Uint64()`).
    /// Informational only: we trust roots by their PEM. Exact up to 2^63 - 1; above that (random
    /// serials from external CAs such as Vault) the value passes through a `Double` in
    /// `JSONValue` and is rounded to 53 significant bits.
    package var serialNumber: UInt64
    var signingKeyID: String
    /// RFC 3339 timestamps as Consul sends them (Go's zero time when unset).
    var notBefore: String?
    var notAfter: String?
    package var rootCertPEM: String
    /// Intermediates to attach to leaves signed by this root; `null` becomes `[]`. During a CA
    /// rotation the new root carries here a certificate for its key cross-signed by the old root.
    var intermediateCertPEMs: [String]
    var active: Bool

    init(id: String, name: String = "", serialNumber: UInt64 = 0, signingKeyID: String = "",
                notBefore: String? = nil, notAfter: String? = nil, rootCertPEM: String,
                intermediateCertPEMs: [String] = [], active: Bool) {
        self.id = id
        self.name = name
        self.serialNumber = serialNumber
        self.signingKeyID = signingKeyID
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.rootCertPEM = rootCertPEM
        self.intermediateCertPEMs = intermediateCertPEMs
        self.active = active
    }
}

/// `GET /v1/agent/connect/ca/roots` (index-blocking).
package struct ConsulCARoots: Equatable, Sendable {
    var activeRootID: String
    /// `<cluster-uuid>.consul`: the host part of every SPIFFE ID this cluster issues.
    package var trustDomain: String
    package var roots: [ConsulCARoot]

    init(activeRootID: String, trustDomain: String, roots: [ConsulCARoot]) {
        self.activeRootID = activeRootID
        self.trustDomain = trustDomain
        self.roots = roots
    }

    /// The root named by `ActiveRootID`, else the one flagged `Active`.
    var activeRoot: ConsulCARoot? {
        roots.first { $0.id == activeRootID } ?? roots.first { $0.active }
    }

    /// Every listed root certificate, active or not: the trust store for peer verification.
    ///
    /// Inactive roots stay listed during a rotation (until about twice the leaf TTL has
    /// passed) because peers may still present leaves they signed; trusting only the active
    /// root would cut those peers off mid-rotation.
    package var trustedRootsPEM: String { joinPEM(roots.map(\.rootCertPEM)) }

    /// Every root's intermediates, kept apart from `trustedRootsPEM` on purpose. They are not
    /// trust anchors: a peer sends its own chain (Consul's leaf `CertPEM` already carries the
    /// intermediates after the leaf), and the cross-signed certificate seen during a rotation
    /// only links the new root to the old one, both of which we trust directly anyway. Putting
    /// intermediates into the trust store would make any of them an anchor where OpenSSL is
    /// asked to accept partial chains, widening trust beyond the roots Consul lists. Use this
    /// only as untrusted chain-building material.
    var intermediatesPEM: String { joinPEM(roots.flatMap(\.intermediateCertPEMs)) }

    package static func decode(_ data: Data, source: String) throws -> ConsulCARoots {
        let root = try ConsulResponseBody.root(data, source: source)
        _ = try root.object()
        return ConsulCARoots(
            activeRootID: try root.require("ActiveRootID").string(),
            // Agents before 1.2 (and the docs' sample) send none: the root certificate's
            // SPIFFE URI SAN names it then (TLSCredentials reads it from there).
            trustDomain: try root.optionalString("TrustDomain") ?? "",
            roots: try root.field("Roots")?.array().map(decodeRoot) ?? []
        )
    }

    private static func decodeRoot(_ node: ConfigNode) throws -> ConsulCARoot {
        _ = try node.object()
        return ConsulCARoot(
            id: try node.requiredNonEmptyString("ID"),
            name: try node.optionalString("Name") ?? "",
            serialNumber: try node.field("SerialNumber")?.uint64() ?? 0,
            signingKeyID: try node.optionalString("SigningKeyID") ?? "",
            notBefore: try node.optionalNonEmptyString("NotBefore"),
            notAfter: try node.optionalNonEmptyString("NotAfter"),
            rootCertPEM: try node.requiredNonEmptyString("RootCert"),
            intermediateCertPEMs: try node.field("IntermediateCerts")?.array().map { try $0.nonEmptyString() } ?? [],
            active: try node.field("Active")?.bool() ?? false
        )
    }
}

// MARK: - GET /v1/agent/connect/ca/leaf/:service

/// `GET /v1/agent/connect/ca/leaf/:service` (index-blocking; X-Consul-Index = ModifyIndex).
/// `description` leaves the private key out, so the value is safe to log.
package struct ConsulLeafCertificate: Equatable, Sendable, CustomStringConvertible {
    /// Colon-hex, e.g. "3a:5f:07".
    package var serialNumber: String
    /// The leaf, possibly followed by intermediates: present the whole chain.
    package var certPEM: String
    package var privateKeyPEM: String
    package var service: String
    /// `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>`.
    package var serviceURI: String
    /// RFC 3339.
    var validAfter: String
    var validBefore: String
    var createIndex: UInt64
    var modifyIndex: UInt64

    init(serialNumber: String, certPEM: String, privateKeyPEM: String, service: String, serviceURI: String,
                validAfter: String, validBefore: String, createIndex: UInt64 = 0, modifyIndex: UInt64 = 0) {
        self.serialNumber = serialNumber
        self.certPEM = certPEM
        self.privateKeyPEM = privateKeyPEM
        self.service = service
        self.serviceURI = serviceURI
        self.validAfter = validAfter
        self.validBefore = validBefore
        self.createIndex = createIndex
        self.modifyIndex = modifyIndex
    }

    package var description: String {
        "ConsulLeafCertificate(service: \(service), serial: \(serialNumber), uri: \(serviceURI), "
            + "valid: \(validAfter) – \(validBefore), modifyIndex: \(modifyIndex), privateKey: <redacted>)"
    }

    package static func decode(_ data: Data, source: String) throws -> ConsulLeafCertificate {
        let root = try ConsulResponseBody.root(data, source: source)
        _ = try root.object()
        return ConsulLeafCertificate(
            serialNumber: try root.requiredNonEmptyString("SerialNumber"),
            certPEM: try root.requiredNonEmptyString("CertPEM"),
            privateKeyPEM: try root.requiredNonEmptyString("PrivateKeyPEM"),
            service: try root.requiredNonEmptyString("Service"),
            serviceURI: try root.requiredNonEmptyString("ServiceURI"),
            validAfter: try root.requiredNonEmptyString("ValidAfter"),
            validBefore: try root.requiredNonEmptyString("ValidBefore"),
            createIndex: try root.field("CreateIndex")?.uint64() ?? 0,
            modifyIndex: try root.field("ModifyIndex")?.uint64() ?? 0
        )
    }
}

// MARK: - GET /v1/agent/self

/// The parts of `GET /v1/agent/self` the sidecar uses.
package struct ConsulAgentSelf: Equatable, Sendable {
    /// `Config.Datacenter`: the `dc` segment of local SPIFFE IDs.
    package var datacenter: String
    /// `DebugConfig.DefaultIntentionPolicy` (agent option `default_intention_policy`); nil when
    /// absent or empty, in which case Consul falls back to the ACL default policy.
    package var defaultIntentionPolicy: IntentionAction?

    init(datacenter: String, defaultIntentionPolicy: IntentionAction? = nil) {
        self.datacenter = datacenter
        self.defaultIntentionPolicy = defaultIntentionPolicy
    }

    package static func decode(_ data: Data, source: String) throws -> ConsulAgentSelf {
        let root = try ConsulResponseBody.root(data, source: source)
        _ = try root.object()
        let config = try root.require("Config")
        _ = try config.object()
        var policy: IntentionAction?
        if let debug = try root.field("DebugConfig") {
            _ = try debug.object()
            if let text = try debug.optionalNonEmptyString("DefaultIntentionPolicy") {
                guard let action = IntentionAction(rawValue: text.lowercased()) else {
                    throw debug.error("\"\(text)\" is not \"allow\" or \"deny\"", at: "DefaultIntentionPolicy")
                }
                policy = action
            }
        }
        return ConsulAgentSelf(datacenter: try config.requiredNonEmptyString("Datacenter"), defaultIntentionPolicy: policy)
    }
}
