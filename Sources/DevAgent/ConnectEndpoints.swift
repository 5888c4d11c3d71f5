import FoundationEssentials
import NIOHTTP1
import SidecarHTTP
import SidecarModel

/// Connect CA (roots, leaves, CA configuration), intention match and authorize.
struct ConnectEndpoints {
    let engine: AgentEngine

    func handle(_ route: Route) async throws -> HTTPResponse? {
        if route.matches("agent", "connect", "ca", "roots") || route.matches("connect", "ca", "roots") {
            try route.require(.GET)
            let blocking = try route.blocking()
            let (index, body) = try await engine.store.blockingRead(minIndex: blocking.index, wait: blocking.wait) { state in
                (state.ca.rootsIndex, Self.roots(state.ca))
            }
            return .json(body, index: index)
        }
        if let service = route.parameter(after: "agent", "connect", "ca", "leaf") {
            try route.require(.GET)
            try route.access.require(.serviceWrite(service))
            let blocking = try route.blocking()
            _ = try engine.leaf(for: service, tenancy: route.tenancy)
            let key = LeafKey(service: service, tenancy: route.tenancy), enterprise = engine.configuration.enterprise
            if let expired = try engine.store.write({ state -> LeafRecord? in
                guard state.expiredLeafReads > 0 else { return nil }
                state.expiredLeafReads -= 1
                return try state.expiredLeaf(key, datacenter: engine.configuration.datacenter)
            }) {
                return .json(Self.leaf(expired, enterprise: enterprise), index: expired.modifyIndex)
            }
            let (index, body) = try await engine.store.blockingRead(minIndex: blocking.index, wait: blocking.wait) { state in
                guard let leaf = state.leaves[key] else { throw HTTPError(status: 500, message: "leaf for \(service) vanished") }
                return (leaf.modifyIndex, Self.leaf(leaf, enterprise: enterprise))
            }
            return .json(body, index: index)
        }
        if route.matches("connect", "ca", "configuration") {
            try route.require(.GET, .PUT)
            try route.access.require(route.request.method == .PUT ? .operatorWrite : .operatorRead)
            if route.request.method == .PUT {
                try engine.updateCAConfiguration(try Fields.parse(route.request.body, what: "the CA configuration"))
                return .text(.ok, "")
            }
            let (index, body) = engine.store.read { state in (state.ca.configModifyIndex, Self.caConfiguration(state.ca)) }
            return .json(body, index: index)
        }
        if route.matches("connect", "intentions", "match") {
            try route.require(.GET)
            return try await intentionMatch(route)
        }
        if route.matches("agent", "connect", "authorize") {
            try route.require(.POST)
            let body = try Fields.parse(route.request.body, what: "the authorize request")
            guard let target = try body.string("Target"), !target.isEmpty else { throw HTTPError.badRequest("Target service must be specified") }
            try route.access.require(.serviceWrite(target))
            guard let uri = try body.string("ClientCertURI"), !uri.isEmpty else { throw HTTPError.badRequest("ClientCertURI must be specified") }
            let answer = try engine.store.read { state in
                try IntentionRendering.authorize(state, target: target, tenancy: route.tenancy, clientCertURI: uri,
                                                 defaultAction: engine.defaultIntentionAction)
            }
            return .json(answer)
        }
        return nil
    }

    private func intentionMatch(_ route: Route) async throws -> HTTPResponse {
        let by = route.request.queryValue("by") ?? ""
        guard by == "destination" || by == "source" else { throw HTTPError.badRequest("required query parameter 'by' not set") }
        guard by == "destination" else { throw HTTPError.badRequest("the dev agent only matches by=destination") }
        let names = route.request.query["name"] ?? []
        guard !names.isEmpty else { throw HTTPError.badRequest("required query parameter 'name' not set") }
        for name in names { try route.access.require(.intentionRead(name)) }
        let blocking = try route.blocking()
        let enterprise = engine.configuration.enterprise
        let (index, body) = try await engine.store.blockingRead(minIndex: blocking.index, wait: blocking.wait) { state in
            (state.configIndex, JSON.object(names.map { name in
                (name, .array(state.intentions(forDestination: name, tenancy: route.tenancy).map { IntentionRendering.render($0.0, source: $0.1, entry: $0.2, enterprise: enterprise) }))
            }))
        }
        return .json(body, index: index)
    }

    static func roots(_ ca: CAState) -> JSON {
        .object([
            ("ActiveRootID", .string(ca.activeRoot.id)),
            ("TrustDomain", .string(ca.trustDomain)),
            ("Roots", .array(ca.roots.map { root in
                .object([
                    ("ID", .string(root.id)),
                    ("Name", .string("Consul CA Primary Cert")),
                    ("SerialNumber", .uint(root.root.serial)),
                    ("SigningKeyID", .string(Format.colonHex(root.root.key.keyIdentifier))),
                    ("ExternalTrustDomain", .string(ca.trustDomain)),
                    ("NotBefore", .string(Timestamp.rfc3339(root.root.certificate.notBefore, .seconds))),
                    ("NotAfter", .string(Timestamp.rfc3339(root.root.certificate.notAfter, .seconds))),
                    ("RootCert", .string(root.pem)),
                    ("IntermediateCerts", root.intermediatePEMs.isEmpty ? .null : .array(root.intermediatePEMs.map(JSON.string))),
                    ("Active", .bool(root.active)),
                    ("PrivateKeyType", .string("ec")),
                    ("PrivateKeyBits", .int(256)),
                    ("CreateIndex", .uint(root.createIndex)),
                    ("ModifyIndex", .uint(root.modifyIndex)),
                ])
            })),
        ])
    }

    static func leaf(_ leaf: LeafRecord, enterprise: Bool) -> JSON {
        let fields: [(String, JSON)] = [
            ("SerialNumber", .string(leaf.serialNumber)),
            ("CertPEM", .string(leaf.certPEM)),
            ("PrivateKeyPEM", .string(leaf.privateKeyPEM)),
            ("Service", .string(leaf.service)),
            ("ServiceURI", .string(leaf.serviceURI)),
            ("ValidAfter", .string(Timestamp.rfc3339(leaf.validAfter, .seconds))),
            ("ValidBefore", .string(Timestamp.rfc3339(leaf.validBefore, .seconds))),
        ]
        return .object(fields + leaf.tenancy.answerFields(enterprise: enterprise)
                       + [("CreateIndex", .uint(leaf.createIndex)), ("ModifyIndex", .uint(leaf.modifyIndex))])
    }

    static func caConfiguration(_ ca: CAState) -> JSON {
        .object([
            ("Provider", .string("consul")),
            ("Config", .object([
                ("LeafCertTTL", .string(Format.goDuration(ca.leafTTL))),
                ("RotationPeriod", .string("2160h")),
                ("IntermediateCertTTL", .string("8760h")),
            ])),
            ("State", .null),
            ("ForceWithoutCrossSigning", .bool(false)),
            ("CreateIndex", .uint(ca.configCreateIndex)),
            ("ModifyIndex", .uint(ca.configModifyIndex)),
        ])
    }
}
