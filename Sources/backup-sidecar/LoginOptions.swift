import ArgumentParser
import ConsulAgent
import Logging
import SidecarCore

/// `run`'s ACL login flags: a bearer JWT (file or Azure managed identity) exchanged for the
/// Consul ACL token through `POST /v1/acl/login`, instead of -token/-token-file.
struct LoginOptions: ParsableArguments {
    @Option(name: [.customLong("login-method"), .customLong("login-method", withSingleDash: true)],
            help: "Consul mode: get the ACL token from POST /v1/acl/login with this auth method (renewed before it expires, logged out at exit).")
    var method: String?

    @Option(name: .customLong("login-bearer-token-file"),
            help: "With --login-method: the JWT to log in with, in a file re-read on each login.")
    var bearerTokenFile: String?

    @Flag(name: .customLong("azure-managed-identity"),
          help: "With --login-method: log in with this Azure VM's managed-identity token from the Instance Metadata Service.")
    var azureManagedIdentity = false

    @Option(name: .customLong("azure-resource"), help: "The managed-identity token's audience (IMDS resource).")
    var azureResource: String = AzureManagedIdentity.defaultResource

    @Option(name: .customLong("azure-imds-url"), help: "The IMDS token endpoint.")
    var azureIMDSURL: String = AzureManagedIdentity.defaultIMDSURL

    @Option(name: .customLong("login-meta"), help: "KEY=VALUE sent as the login's Meta (repeatable).")
    var meta: [String] = []

    /// The login session, nil when no login flag is given. Throws a message for exit 2.
    func makeSession(staticToken: Bool, logger: Logger, metrics: SidecarMetrics) throws -> ACLLogin? {
        let bearerFlagsGiven = bearerTokenFile != nil || azureManagedIdentity || !meta.isEmpty
        guard let method else {
            if bearerFlagsGiven { throw ValidationError("--login-bearer-token-file, --azure-managed-identity and --login-meta need --login-method") }
            return nil
        }
        guard !staticToken else {
            throw ValidationError("--login-method cannot be combined with -token or -token-file: the login provides the ACL token")
        }
        let bearer: any BearerTokenProvider
        switch (bearerTokenFile, azureManagedIdentity) {
        case (let file?, false): bearer = BearerTokenFile(path: file)
        case (nil, true): bearer = AzureManagedIdentity(imdsURL: azureIMDSURL, resource: azureResource)
        default: throw ValidationError("--login-method needs exactly one of --login-bearer-token-file and --azure-managed-identity")
        }
        var options = ACLLoginOptions(authMethod: method)
        for item in meta {
            guard let equals = item.firstIndex(of: "="), equals != item.startIndex else {
                throw ValidationError("--login-meta must be KEY=VALUE, not \"\(item)\"")
            }
            options.meta[String(item[..<equals])] = String(item[item.index(after: equals)...])
        }
        return ACLLogin(options: options, bearer: bearer, logger: logger, metrics: metrics)
    }
}
