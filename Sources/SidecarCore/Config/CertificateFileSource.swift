import Dispatch
import Foundation
import Logging
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

    /// Loads the three files now (a bad set is a startup error), then watches them.
    public func start(interval: DispatchTimeInterval = .seconds(1)) throws -> TLSCredentials {
        let contents = try FileContentWatcher.read([paths.certificate, paths.key, paths.roots])
        let credentials = try Self.parse(contents, paths: paths, trustDomain: trustDomain)
        watcher.start(initial: contents, interval: interval)
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
