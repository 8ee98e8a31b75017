// Goal: an answer to the monitor's challenge binds the key, the epoch and the
// journal position (DESIGN.md §2 "Monitor": "a keyed MAC of the key, the
// epoch and the journal position"), laid out so that a server and a monitor
// built apart agree; codes are compared in full.
// Method: the response pinned to one reference value (HMAC-SHA-256 by
// swift-crypto, as the runtime's; its RFC 4231 vectors are checked in
// AuthenticatorTests), and every input changed in turn.
@testable import BatonCore
import XCTest

final class FailoverMACTests: XCTestCase {
    private func hex(_ bytes: [UInt8]) -> String { bytes.map { String($0, radix: 16).leftPadded(2) }.joined() }
    private func ascii(_ text: String) -> [UInt8] { Array(text.utf8) }

    // "a keyed MAC of the key, the epoch and the journal position"
    func testResponseIsHMACOfKeyEpochAndPositionLittleEndian() {
        let response = ChallengeMAC.response(.testing(ascii("baton-export-secret")), key: Array(0..<16), epoch: 7,
                                             journalSequence: 4242)
        XCTAssertEqual(hex(response), "c5bab1e3c903037d57fc56845eee8a5cfadd99f5eb46ad4802732652de5874b5")
    }

    func testResponseChangesWithEveryInput() {
        let secret = ascii("s3cret")
        let key = [UInt8](repeating: 9, count: ChallengeMAC.keyBytes)
        let base = ChallengeMAC.response(.testing(secret), key: key, epoch: 3, journalSequence: 10)
        var otherKey = key
        otherKey[15] ^= 1
        let variants = [
            ChallengeMAC.response(.testing(ascii("s3creT")), key: key, epoch: 3, journalSequence: 10),
            ChallengeMAC.response(.testing(secret), key: otherKey, epoch: 3, journalSequence: 10),
            // "a fenced server that wakes up" answers with its old epoch: the MAC differs.
            ChallengeMAC.response(.testing(secret), key: key, epoch: 2, journalSequence: 10),
            ChallengeMAC.response(.testing(secret), key: key, epoch: 3, journalSequence: 11),
        ]
        for (index, variant) in variants.enumerated() {
            XCTAssertFalse(MessageAuthenticator.matches(base, variant), "variant \(index)")
        }
        XCTAssertTrue(MessageAuthenticator.matches(base, ChallengeMAC.response(.testing(secret), key: key, epoch: 3, journalSequence: 10)))
    }

    func testCompareRejectsAnyDifferenceAndOtherLengths() {
        let a = [UInt8](repeating: 0x5a, count: 32)
        for index in [0, 15, 31] {
            var b = a
            b[index] ^= 0x80
            XCTAssertFalse(MessageAuthenticator.matches(a, b), "byte \(index)")
        }
        XCTAssertFalse(MessageAuthenticator.matches(a, Array(a.prefix(31))))
        XCTAssertFalse(MessageAuthenticator.matches(a, []))
        XCTAssertTrue(MessageAuthenticator.matches(a, a))
    }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
