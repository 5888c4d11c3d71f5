import FoundationEssentials
import SidecarTLS
import SidecarModel

/// A public key a `jwt` auth method accepts signatures from (`JWTValidationPubKeys`).
struct JWTPublicKey: Sendable {
    let key: PublicKey

    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo), EC P-256 or RSA (2048 bits or more).
    init(pem: String) throws {
        guard let key = try? PublicKey.parsePEM(pem) else {
            throw DevAgentError("not a PEM EC P-256 or RSA (>= 2048 bits) public key")
        }
        self.key = key
    }

    /// JWS `alg` this key verifies; a token's header must name it (no algorithm confusion).
    var algorithm: String {
        key.algorithm == .ecP256 ? "ES256" : "RS256"
    }

    func verifies(_ signature: Data, over input: Data) -> Bool {
        switch key.algorithm {
        case .ecP256:
            // JWS ES256 signatures are raw r||s (RFC 7518 3.4), not DER.
            guard signature.count == 64, let der = ECDSASignatureFormat.der(fromRaw: Array(signature)) else { return false }
            return key.verifiesSHA256(der, over: Array(input))
        case .rsa:
            return key.verifiesSHA256(Array(signature), over: Array(input))
        }
    }
}

/// Why a bearer token was refused; the text goes to the agent's log and the 403 body.
struct JWTRejection: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Checks a compact JWS the way Consul's `jwt` auth method does with static keys: signature
/// (RS256/ES256 only), `exp`/`nbf` with leeway, `aud` against the bound audiences, `iss`
/// against the bound issuer. Returns the verified claims.
struct JWTValidator {
    var keys: [JWTPublicKey]
    var boundAudiences: [String]
    var boundIssuer: String?
    var leeway: TimeInterval

    func validate(_ token: String, now: Date = Date()) throws -> [String: JSONValue] {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerData = Self.base64URL(parts[0]), let payloadData = Self.base64URL(parts[1]),
              let signature = Self.base64URL(parts[2]) else {
            throw JWTRejection("bearer token is not a compact JWS (header.payload.signature)")
        }
        guard let header = JSONValue.parsed(headerData)?.objectValue,
              let claims = JSONValue.parsed(payloadData)?.objectValue else {
            throw JWTRejection("bearer token header or claims are not JSON objects")
        }
        let algorithm = header["alg"]?.stringValue ?? ""
        guard algorithm == "RS256" || algorithm == "ES256" else {
            throw JWTRejection("unsupported signing algorithm \"\(algorithm)\" (RS256 and ES256 are accepted)")
        }
        let signingInput = Data("\(parts[0]).\(parts[1])".utf8)
        guard keys.contains(where: { $0.algorithm == algorithm && $0.verifies(signature, over: signingInput) }) else {
            throw JWTRejection("no configured public key validates the token signature")
        }
        let time = now.timeIntervalSince1970
        if let exp = claims["exp"]?.doubleValue, time > exp + leeway {
            throw JWTRejection("token is expired (exp \(Int(exp)), now \(Int(time)))")
        }
        if let nbf = claims["nbf"]?.doubleValue, time + leeway < nbf {
            throw JWTRejection("token is not valid yet (nbf \(Int(nbf)), now \(Int(time)))")
        }
        if !boundAudiences.isEmpty {
            let audiences: [String]
            switch claims["aud"] {
            case .string(let audience): audiences = [audience]
            case .array(let items):
                // Every member a string, or none counts (Go's []string decoding refuses the token).
                let strings = items.compactMap(\.stringValue)
                audiences = strings.count == items.count ? strings : []
            default: audiences = []
            }
            guard audiences.contains(where: boundAudiences.contains) else {
                throw JWTRejection("audience \(audiences) matches none of the bound audiences \(boundAudiences)")
            }
        }
        if let boundIssuer, claims["iss"]?.stringValue != boundIssuer {
            throw JWTRejection("issuer \"\(claims["iss"]?.stringValue ?? "")\" is not the bound issuer \"\(boundIssuer)\"")
        }
        return claims
    }

    static func base64URL<S: StringProtocol>(_ text: S) -> Data? {
        var base64 = String(text).replacing("-", with: "+").replacing("_", with: "/")
        guard !base64.contains("=") else { return nil }
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        return Data(base64Encoded: base64)
    }
}
