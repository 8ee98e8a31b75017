import BatonCore
import Crypto

extension MessageAuthenticator {
    /// HMAC-SHA-256 by swift-crypto, as the runtime makes it (the core has no cryptography).
    static func testing(_ secret: [UInt8]) -> MessageAuthenticator {
        let key = SymmetricKey(data: secret)
        return MessageAuthenticator { Array(HMAC<SHA256>.authenticationCode(for: $0, using: key)) }
    }
}
