import Logging
import SidecarTLS

/// File mode's certificates: `--cert`, `--key` and `--ca`, re-read when any of them changes or
/// on SIGHUP. Renewal tools write the files one after another, in any order: a set whose key
/// does not match its certificate (or that is unparsable, expired or not yet valid) is logged
/// and skipped, and the next write that completes the set is picked up. The certificates in use
/// stay until a good set arrives.
package typealias CertificateFileSource = WatchedFiles<TLSCredentials>

extension WatchedFiles where Value == TLSCredentials {
    package convenience init(certificatePath: String, keyPath: String, rootsPath: String, trustDomain: String?,
                            logger: Logger, apply: @escaping @Sendable (TLSCredentials) throws -> Void) {
        self.init(paths: [certificatePath, keyPath, rootsPath], logger: logger,
                  rejection: "new certificate files not loaded; the current certificates stay (retried when the files change)",
                  rejectionLevel: .warning,
                  parse: { contents in
                      try TLSCredentials.parse(certificatePEM: Array(contents[0]), keyPEM: Array(contents[1]),
                                               rootsPEM: Array(contents[2]),
                                               names: (certificatePath, keyPath, rootsPath), trustDomain: trustDomain)
                  },
                  apply: apply)
    }
}
