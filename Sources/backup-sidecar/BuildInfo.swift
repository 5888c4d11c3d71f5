import SidecarMux
import SidecarTLS

/// What `--version` prints and `backup_sidecar_build_info` carries. `buildCommit` comes from
/// the BuildInfo plugin (git, at build time); the library versions are the loaded ones.
enum BuildInfo {
    /// The release version; CHANGELOG.md has a section for each one.
    static let version = "0.1.0"

    static var labels: [(String, String)] {
        [("version", version), ("commit", buildCommit), ("openssl", OpenSSLLibrary.version), ("nghttp2", NGHTTP2Library.version)]
    }

    static var text: String {
        """
        backup-sidecar \(version) (commit \(buildCommit))
        \(OpenSSLLibrary.version)
        nghttp2 \(NGHTTP2Library.version)
        """
    }
}
