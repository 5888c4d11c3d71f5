import FoundationEssentials
import SidecarTLS
import SidecarModel

/// Development and tests only: an identity provider stand-in (Azure AD's role) that signs
/// JWTs with a fresh key, whose public PEM goes into a `jwt` auth method's
/// `JWTValidationPubKeys`.
struct DevJWTIssuer: Sendable {
    enum Algorithm: String, Sendable {
        case es256 = "ES256"
        case rs256 = "RS256"
    }

    let algorithm: Algorithm
    private let key: PrivateKey

    init(_ algorithm: Algorithm) throws {
        self.algorithm = algorithm
        key = try PrivateKey.generate(algorithm == .es256 ? .ecP256 : .rsa(bits: 2048))
    }

    /// The PEM `PUBLIC KEY` that verifies this issuer's tokens.
    var publicKeyPEM: String { key.publicKeyPEM }

    /// A compact JWS of `claims`. `alg` overrides the header's algorithm, e.g. "none" or
    /// "HS256", to test refusals.
    func sign(_ claims: [String: JSON], alg: String? = nil) throws -> String {
        let header = JSON.object([("alg", .string(alg ?? algorithm.rawValue)), ("typ", .string("JWT"))]).data
        let payload = JSON.object(claims.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }).data
        let input = "\(Self.base64URL(header)).\(Self.base64URL(payload))"
        var signature = try key.signSHA256(Array(input.utf8))
        if algorithm == .es256 {
            // JWS ES256 is raw r||s (RFC 7518 3.4), not DER.
            guard let raw = ECDSASignatureFormat.raw(fromDER: signature) else { throw TLSMaterialError("ES256 signature") }
            signature = raw
        }
        return "\(input).\(Self.base64URL(Data(signature)))"
    }

    /// Claims shaped like an Azure managed-identity token, valid from now for `lifetime`.
    static func claims(subject: String, audience: String, issuer: String, lifetime: TimeInterval = 3600,
                              now: Date = Date()) -> [String: JSON] {
        let time = Int(now.timeIntervalSince1970)
        return ["sub": .string(subject), "aud": .string(audience), "iss": .string(issuer), "iat": .int(time),
                "nbf": .int(time - 5), "exp": .int(time + Int(lifetime))]
    }

    static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacing("+", with: "-").replacing("/", with: "_")
            .replacing("=", with: "")
    }
}
