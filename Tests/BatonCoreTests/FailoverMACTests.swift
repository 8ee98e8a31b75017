// Goal: the challenge MAC is HMAC-SHA-256 exactly, so a server and a monitor
// built apart agree, and an answer binds the key, the epoch and the journal
// position (DESIGN.md §2 "Monitor": "a keyed MAC of the key, the epoch and
// the journal position").
// Method: the published vectors (FIPS 180-2 appendix B and the 896-bit
// message of FIPS 180-4's examples for SHA-256; RFC 4231 §4 for HMAC), the
// padding boundaries checked against a reference implementation (Python's
// hashlib), and the challenge response pinned to one reference value.
@testable import BatonCore
import XCTest

final class FailoverMACTests: XCTestCase {
    private func hex(_ bytes: [UInt8]) -> String { bytes.map { String($0, radix: 16).leftPadded(2) }.joined() }
    private func ascii(_ text: String) -> [UInt8] { Array(text.utf8) }

    func testSHA256PublishedVectors() {
        XCTAssertEqual(hex(SHA256.hash([])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex(SHA256.hash(ascii("abc"))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(hex(SHA256.hash(ascii("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(hex(SHA256.hash(ascii(
            "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"))),
                       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1")
    }

    func testSHA256MillionAsFedInPieces() {
        // Fed in uneven pieces, so the block boundary falls inside an update.
        var hasher = SHA256()
        let piece = [UInt8](repeating: UInt8(ascii: "a"), count: 999)
        var fed = 0
        while fed < 1_000_000 {
            let count = min(piece.count, 1_000_000 - fed)
            hasher.update(piece[..<count])
            fed += count
        }
        XCTAssertEqual(hex(hasher.finalize()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testSHA256PaddingBoundaries() {
        // 55 bytes: the length fits in the last block; 56: it spills into a new one; 64: an exact block.
        let expected: [Int: String] = [
            55: "463eb28e72f82e0a96c0a4cc53690c571281131f672aa229e0d45ae59b598b59",
            56: "da2ae4d6b36748f2a318f23e7ab1dfdf45acdc9d049bd80e59de82a60895f562",
            63: "29af2686fd53374a36b0846694cc342177e428d1647515f078784d69cdb9e488",
            64: "fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108",
            119: "da18797ed7c3a777f0847f429724a2d8cd5138e6ed2895c3fa1a6d39d18f7ec6",
            120: "f52b23db1fbb6ded89ef42a23ce0c8922c45f25c50b568a93bf1c075420bbb7c",
        ]
        for (count, digest) in expected {
            XCTAssertEqual(hex(SHA256.hash((0..<count).map { UInt8($0 % 256) })), digest, "\(count) bytes")
        }
    }

    func testHMACRFC4231Vectors() {
        let cases: [([UInt8], [UInt8], String)] = [
            ([UInt8](repeating: 0x0b, count: 20), ascii("Hi There"),
             "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (ascii("Jefe"), ascii("what do ya want for nothing?"),
             "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            ([UInt8](repeating: 0xaa, count: 20), [UInt8](repeating: 0xdd, count: 50),
             "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
            (Array(1...25), [UInt8](repeating: 0xcd, count: 50),
             "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
            ([UInt8](repeating: 0xaa, count: 131), ascii("Test Using Larger Than Block-Size Key - Hash Key First"),
             "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
            ([UInt8](repeating: 0xaa, count: 131), ascii(
                "This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm."),
             "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
        ]
        for (index, (secret, message, expected)) in cases.enumerated() {
            XCTAssertEqual(hex(HMACSHA256.authenticationCode(secret: secret, message: message)), expected, "case \(index)")
        }
        // Test case 5 publishes only the first 128 bits.
        let truncated = HMACSHA256.authenticationCode(secret: [UInt8](repeating: 0x0c, count: 20),
                                                      message: ascii("Test With Truncation"))
        XCTAssertEqual(hex(Array(truncated.prefix(16))), "a3b6167473100ee06e0c796c2955552b")
    }

    // "a keyed MAC of the key, the epoch and the journal position"
    func testResponseIsHMACOfKeyEpochAndPositionLittleEndian() {
        let response = ChallengeMAC.response(secret: ascii("baton-export-secret"), key: Array(0..<16), epoch: 7,
                                             journalSequence: 4242)
        XCTAssertEqual(hex(response), "c5bab1e3c903037d57fc56845eee8a5cfadd99f5eb46ad4802732652de5874b5")
    }

    func testResponseChangesWithEveryInput() {
        let secret = ascii("s3cret")
        let key = [UInt8](repeating: 9, count: ChallengeMAC.keyBytes)
        let base = ChallengeMAC.response(secret: secret, key: key, epoch: 3, journalSequence: 10)
        var otherKey = key
        otherKey[15] ^= 1
        let variants = [
            ChallengeMAC.response(secret: ascii("s3creT"), key: key, epoch: 3, journalSequence: 10),
            ChallengeMAC.response(secret: secret, key: otherKey, epoch: 3, journalSequence: 10),
            // "a fenced server that wakes up" answers with its old epoch: the MAC differs.
            ChallengeMAC.response(secret: secret, key: key, epoch: 2, journalSequence: 10),
            ChallengeMAC.response(secret: secret, key: key, epoch: 3, journalSequence: 11),
        ]
        for (index, variant) in variants.enumerated() {
            XCTAssertFalse(ChallengeMAC.matches(base, variant), "variant \(index)")
        }
        XCTAssertTrue(ChallengeMAC.matches(base, ChallengeMAC.response(secret: secret, key: key, epoch: 3, journalSequence: 10)))
    }

    func testCompareRejectsAnyDifferenceAndOtherLengths() {
        let a = [UInt8](repeating: 0x5a, count: 32)
        for index in [0, 15, 31] {
            var b = a
            b[index] ^= 0x80
            XCTAssertFalse(ChallengeMAC.matches(a, b), "byte \(index)")
        }
        XCTAssertFalse(ChallengeMAC.matches(a, Array(a.prefix(31))))
        XCTAssertFalse(ChallengeMAC.matches(a, []))
        XCTAssertTrue(ChallengeMAC.matches(a, a))
    }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
