// Goal: the runtime's authenticator is HMAC-SHA-256 exactly (swift-crypto),
// so agents, servers and monitors of two builds agree.
// Method: the published vectors of RFC 4231 §4.
import BatonCore
import BatonRuntime
import XCTest

final class AuthenticatorTests: XCTestCase {
    private func hex(_ bytes: [UInt8]) -> String { bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
    private func ascii(_ text: String) -> [UInt8] { Array(text.utf8) }

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
            XCTAssertEqual(hex(MessageAuthenticator.hmacSHA256(secret: secret).code(message)), expected, "case \(index)")
        }
        // Test case 5 publishes only the first 128 bits.
        let truncated = MessageAuthenticator.hmacSHA256(secret: [UInt8](repeating: 0x0c, count: 20))
            .code(ascii("Test With Truncation"))
        XCTAssertEqual(hex(Array(truncated.prefix(16))), "a3b6167473100ee06e0c796c2955552b")
    }
}
