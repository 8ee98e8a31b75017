/// A keyed code over messages: HMAC-SHA-256 under the cluster's shared
/// secret, for the monitor's challenge, agent datagrams and session proofs.
/// The core holds no cryptography of its own: the runtime makes one with
/// swift-crypto (`MessageAuthenticator.hmacSHA256(secret:)`), and so do the
/// core's tests.
public struct MessageAuthenticator: Sendable {
    /// Bytes of a code: a full HMAC-SHA-256, never truncated.
    public static let codeBytes = 32

    private let compute: @Sendable (_ message: [UInt8]) -> [UInt8]

    public init(_ compute: @escaping @Sendable (_ message: [UInt8]) -> [UInt8]) {
        self.compute = compute
    }

    public func code(_ message: [UInt8]) -> [UInt8] {
        let code = compute(message)
        precondition(code.count == Self.codeBytes, "an authenticator gave \(code.count) bytes, not \(Self.codeBytes)")
        return code
    }

    /// Equal bytes, in time that depends only on the lengths: an early exit
    /// would tell a forger how many leading bytes of a guess were right.
    public static func matches(_ a: [UInt8], _ b: some Collection<UInt8>) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for (x, y) in zip(a, b) { difference |= x ^ y }
        return difference == 0
    }
}
