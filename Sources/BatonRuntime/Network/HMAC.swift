import BatonCore
import Crypto

extension MessageAuthenticator {
    /// HMAC-SHA-256 under `secret`, by swift-crypto (BoringSSL on Linux).
    public static func hmacSHA256(secret: [UInt8]) -> MessageAuthenticator {
        precondition(!secret.isEmpty, "an empty secret authenticates nothing")
        let key = SymmetricKey(data: secret)
        return MessageAuthenticator { message in Array(HMAC<SHA256>.authenticationCode(for: message, using: key)) }
    }
}
