import Synchronization
import SidecarModel
import SidecarTLS

/// Names one tunnel (a connection, or a stream on a mux connection) or one mux connection in
/// every audit line about it, so a SIEM can join a handshake, its decisions and its close.
/// Unique within the process by a counter, and across restarts (with overwhelming
/// probability) by a random 64-bit prefix drawn once per process: "9f3c01d2a17b44e0-17".
enum ConnectionID {
    private static let prefix = lowercaseHex(secureRandomBytes(8))

    private static let counter = Atomic<UInt64>(0)

    static func next() -> String {
        let value = counter.add(1, ordering: .relaxed).newValue
        return prefix + "-" + String(value)
    }
}
