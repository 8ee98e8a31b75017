/// The monitor's challenge (DESIGN.md §2 "Monitor"): the monitor sends a fresh
/// random key, the server answers HMAC(secret, key ‖ epoch ‖ journal position)
/// through its request path. Only a process holding the export's secret can
/// answer, the epoch in the MAC lets a fenced server of an older epoch be told
/// apart, and reading the journal position makes the answer pass the same
/// lock a client mutation takes, so a wedged worker fails the challenge.
public enum ChallengeMAC {
    /// Length of the monitor's random key: 128 bits make a replayed answer to a guessed key hopeless.
    public static let keyBytes = 16
    /// Bytes of a response: a full HMAC-SHA-256, not truncated.
    public static let responseBytes = SHA256.digestBytes

    /// The response a live server of `epoch` at `journalSequence` gives to `key`.
    /// Epoch and sequence are little-endian, as every other Baton field.
    public static func response(secret: [UInt8], key: [UInt8], epoch: UInt64, journalSequence: UInt64) -> [UInt8] {
        precondition(key.count == keyBytes, "probe key of \(key.count) bytes, expected \(keyBytes)")
        precondition(!secret.isEmpty, "an empty secret authenticates nothing")
        var message = ByteWriter(capacity: keyBytes + 16)
        message.write(raw: key)
        message.write(epoch)
        message.write(journalSequence)
        return HMACSHA256.authenticationCode(secret: secret, message: message.bytes)
    }

    /// Equal bytes, in time that depends only on the lengths: an early exit
    /// would tell a forger how many leading bytes of a guess were right.
    public static func matches(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for i in 0..<a.count { difference |= a[i] ^ b[i] }
        return difference == 0
    }
}
