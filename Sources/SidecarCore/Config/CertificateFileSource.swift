import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import SidecarTLS

/// File mode's certificate source: re-reads `--cert`, `--key` and `--ca` when any of them
/// changes (or on SIGHUP) and hands a validated set to `apply`. Renewal tools write the files
/// one after another, in any order: a set whose key does not match its certificate (or that
/// is unparsable, expired or not yet valid) is logged and skipped, and the next write that
/// completes the set is picked up. The certificates in use stay until a good set arrives.
public final class CertificateFileSource: Sendable {
    private let paths: (certificate: String, key: String, roots: String)
    private let trustDomain: String?
    private let watcher: FileContentWatcher
    private let loaded = NIOLockedValueBox<[Data]?>(nil)

    public init(certificatePath: String, keyPath: String, rootsPath: String, trustDomain: String?, logger: Logger,
                apply: @escaping @Sendable (TLSCredentials) throws -> Void) {
        let paths = (certificatePath, keyPath, rootsPath)
        self.paths = paths
        self.trustDomain = trustDomain
        watcher = FileContentWatcher(paths: [certificatePath, keyPath, rootsPath], logger: logger) { contents in
            do {
                let credentials = try Self.parse(contents, paths: paths, trustDomain: trustDomain)
                try apply(credentials)
            } catch {
                logger.warning("new certificate files not loaded; the current certificates stay (retried when the files change)",
                               metadata: ["reason": "\(error)"])
            }
        }
    }

    /// Loads the three files now; a bad set is a startup error.
    public func load() throws -> TLSCredentials {
        let contents = try FileContentWatcher.read([paths.certificate, paths.key, paths.roots])
        let credentials = try Self.parse(contents, paths: paths, trustDomain: trustDomain)
        loaded.withLockedValue { $0 = contents }
        return credentials
    }

    /// Starts watching for changes after what `load()` read (start once the sidecar runs, so
    /// nothing polls in the background while startup can still fail).
    public func watch(interval: DispatchTimeInterval = .seconds(1)) {
        watcher.start(initial: loaded.withLockedValue { $0 } ?? [], interval: interval)
    }

    /// `load()` then `watch()`.
    public func start(interval: DispatchTimeInterval = .seconds(1)) throws -> TLSCredentials {
        let credentials = try load()
        watch(interval: interval)
        return credentials
    }

    public func reload() { watcher.reload() }
    public func stop() { watcher.stop() }

    private static func parse(_ contents: [Data], paths: (certificate: String, key: String, roots: String),
                              trustDomain: String?) throws -> TLSCredentials {
        try TLSCredentials.parse(certificatePEM: Array(contents[0]), keyPEM: Array(contents[1]), rootsPEM: Array(contents[2]),
                                 names: paths, trustDomain: trustDomain)
    }
}
