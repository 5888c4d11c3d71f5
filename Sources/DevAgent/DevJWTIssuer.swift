import Crypto
import CryptoExtras
import Foundation

/// Development and tests only: an identity provider stand-in (Azure AD's role) that signs
/// JWTs with a fresh key, whose public PEM goes into a `jwt` auth method's
/// `JWTValidationPubKeys`.
public struct DevJWTIssuer: @unchecked Sendable {
    public enum Algorithm: String, Sendable {
        case es256 = "ES256"
        case rs256 = "RS256"
    }

    public let algorithm: Algorithm
    private let ecKey: P256.Signing.PrivateKey?
    private let rsaKey: _RSA.Signing.PrivateKey?

    public init(_ algorithm: Algorithm) throws {
        self.algorithm = algorithm
        switch algorithm {
        case .es256: (ecKey, rsaKey) = (P256.Signing.PrivateKey(), nil)
        case .rs256: (ecKey, rsaKey) = (nil, try _RSA.Signing.PrivateKey(keySize: .bits2048))
        }
    }

    /// The PEM `PUBLIC KEY` that verifies this issuer's tokens.
    public var publicKeyPEM: String {
        ecKey?.publicKey.pemRepresentation ?? rsaKey!.publicKey.pemRepresentation
    }

    /// A compact JWS of `claims` (JSON-serializable values). `alg` overrides the header's
    /// algorithm, e.g. "none" or "HS256", to test refusals.
    public func sign(_ claims: [String: Any], alg: String? = nil) throws -> String {
        let header = try JSONSerialization.data(withJSONObject: ["alg": alg ?? algorithm.rawValue, "typ": "JWT"], options: [.sortedKeys])
        let payload = try JSONSerialization.data(withJSONObject: claims, options: [.sortedKeys])
        let input = "\(Self.base64URL(header)).\(Self.base64URL(payload))"
        let signature: Data
        if let ecKey {
            signature = try ecKey.signature(for: SHA256.hash(data: Data(input.utf8))).rawRepresentation
        } else {
            signature = try rsaKey!.signature(for: SHA256.hash(data: Data(input.utf8)), padding: .insecurePKCS1v1_5).rawRepresentation
        }
        return "\(input).\(Self.base64URL(signature))"
    }

    /// Claims shaped like an Azure managed-identity token, valid from now for `lifetime`.
    public static func claims(subject: String, audience: String, issuer: String, lifetime: TimeInterval = 3600,
                              now: Date = Date()) -> [String: Any] {
        let time = Int(now.timeIntervalSince1970)
        return ["sub": subject, "aud": audience, "iss": issuer, "iat": time, "nbf": time - 5, "exp": time + Int(lifetime)]
    }

    static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
