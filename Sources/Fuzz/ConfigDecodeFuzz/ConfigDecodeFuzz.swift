import Foundation
import FuzzSupport
import SidecarModel

/// Service definitions and Consul API responses: the first byte picks the decoder, the rest
/// is the document. A decoder returns a value or throws `ConfigError`; nothing else.
@_cdecl("LLVMFuzzerTestOneInput")
func configDecodeFuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let selector = input.byte() % 7
    let body = Data(input.remainder())
    do {
        switch selector {
        case 0: check(try ProxyDefinition.decode(body, source: "fuzz"))
        case 1: check(try ConsulAgentService.decode(body, source: "fuzz").proxy)
        case 2:
            let roots = try ConsulCARoots.decode(body, source: "fuzz")
            invariant(!roots.trustDomain.isEmpty, "empty trust domain")
            invariant(roots.roots.allSatisfy { !$0.id.isEmpty && !$0.rootCertPEM.isEmpty }, "root without ID or PEM")
        case 3:
            let leaf = try ConsulLeafCertificate.decode(body, source: "fuzz")
            invariant(!leaf.description.contains(leaf.privateKeyPEM), "description shows the private key")
        case 4:
            let instances = try ConsulServiceInstance.decode(body, source: "fuzz")
            invariant(instances.allSatisfy { (0...65535).contains($0.service.port) }, "port out of range")
        case 5:
            let match = try ConsulIntentionMatch.decode(body, source: "fuzz")
            for intention in match.intentionsByName.values.joined() {
                invariant((intention.action == nil) != intention.permissions.isEmpty, "action and permissions both or neither")
            }
        default: _ = try ConsulAgentSelf.decode(body, source: "fuzz")
        }
    } catch {
        invariant(error is ConfigError, "unexpected error \(error)")
    }
    return 0
}

/// What every decoded definition promises the listeners.
private func check(_ definition: ProxyDefinition) {
    let ports = [definition.port, definition.localServicePort, definition.config.bindPort].compactMap { $0 }
    invariant(ports.allSatisfy { (1...65535).contains($0) }, "port out of range in \(definition)")
    let keys = definition.upstreams.map(\.listenerKey)
    invariant(Set(keys).count == keys.count, "two upstreams share a listener: \(keys)")
    invariant(definition.upstreams.allSatisfy { $0.localBindSocketPath != nil || (1...65535).contains($0.localBindPort) },
              "upstream port out of range")
    invariant(definition.config.maxConnections > 0 && definition.config.handshakeTimeoutMs > 0, "non-positive limit")
    invariant((definition.config.idleTimeoutNs ?? 1) > 0 && (definition.config.maxConnectionLifetimeNs ?? 1) > 0,
              "non-positive duration")
}

@main enum ConfigDecodeFuzzMain {
    static func main() { FuzzDriver.main(configDecodeFuzz) }
}
