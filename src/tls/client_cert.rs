//! What a verified client certificate says about its holder, and how a request finds
//! it: [`crate::conns::ConnInfo`] is the connection information tonic puts in every request's
//! extensions (the remote address and, after a TLS handshake in which the client
//! presented a certificate the port trusts, that certificate's [`ClientCert`]).
//!
//! Two fields of the certificate are read, the subject's common name and the end of
//! its validity, by the small DER reader below rather than an X.509 crate: rustls
//! has already parsed and verified the certificate (only one signed by the client CA
//! gets here), and the X.509 crates' proc-macro dependencies change the build's
//! shared host dependencies enough to rebuild RocksDB. The reader walks the fixed
//! layout of RFC 5280's `TBSCertificate` up to the subject, with every length
//! checked; anything it does not understand yields "names nobody", never a panic.

use tokio_rustls::rustls::pki_types::CertificateDer;

/// The parts of a client certificate that authentication uses. Made only from a
/// certificate rustls has already verified against the port's client CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject's common name (CN): the user the certificate logs in as. `None`
    /// when the subject has no CN, more than one, or one that is not a UTF-8 string:
    /// such a certificate names nobody.
    pub common_name: Option<String>,
    /// The end of the certificate's validity, in milliseconds since the Unix epoch.
    pub not_after_ms: u64,
}

impl ClientCert {
    /// The end-entity certificate of a verified chain.
    pub fn from_der(der: &CertificateDer<'_>) -> ClientCert {
        // rustls parsed it to verify it; a certificate that still fails here names
        // nobody.
        der::subject_and_expiry(der.as_ref()).unwrap_or(ClientCert {
            common_name: None,
            not_after_ms: 0,
        })
    }
}

/// Just enough DER (X.690) for [`ClientCert`].
mod der {
    use super::ClientCert;

    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const INTEGER: u8 = 0x02;
    const OID: u8 = 0x06;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;
    /// String types a common name can be read from as UTF-8: UTF8String,
    /// PrintableString, IA5String (the last two are ASCII). T61String, BMPString and
    /// UniversalString are not read: such a name names nobody.
    const TEXT: [u8; 3] = [0x0c, 0x13, 0x16];
    /// id-at-commonName, 2.5.4.3.
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

    /// One element: its tag and its contents; `input` moves past it.
    fn next<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // a multi-byte tag: none in the fields read here
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None; // indefinite (not DER) or absurd
            }
            let (bytes, after) = rest.split_at_checked(n)?;
            rest = after;
            bytes
                .iter()
                .fold(0usize, |len, b| (len << 8) | usize::from(*b))
        };
        let (body, after) = rest.split_at_checked(len)?;
        *input = after;
        Some((tag, body))
    }

    fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
        match next(input)? {
            (t, body) if t == tag => Some(body),
            _ => None,
        }
    }

    /// Certificate = SEQUENCE { tbsCertificate, ... }; TBSCertificate = SEQUENCE {
    /// [0] version OPTIONAL, serialNumber, signature, issuer, validity, subject, ... }.
    pub(super) fn subject_and_expiry(der: &[u8]) -> Option<ClientCert> {
        let mut input = der;
        let mut cert = expect(&mut input, SEQUENCE)?;
        let mut tbs = expect(&mut cert, SEQUENCE)?;
        let (mut tag, _) = next(&mut tbs)?;
        if tag == VERSION {
            (tag, _) = next(&mut tbs)?;
        }
        if tag != INTEGER {
            return None;
        }
        expect(&mut tbs, SEQUENCE)?; // signature algorithm
        expect(&mut tbs, SEQUENCE)?; // issuer
        let mut validity = expect(&mut tbs, SEQUENCE)?;
        let subject = expect(&mut tbs, SEQUENCE)?;
        next(&mut validity)?; // notBefore
        let (tag, not_after) = next(&mut validity)?;
        Some(ClientCert {
            common_name: common_name(subject),
            not_after_ms: time_ms(tag, not_after)?,
        })
    }

    /// The one common name of a Name (SEQUENCE OF SET OF SEQUENCE { OID, value }), if
    /// there is exactly one and it is text.
    fn common_name(mut name: &[u8]) -> Option<String> {
        let mut found = None;
        while !name.is_empty() {
            let mut rdn = expect(&mut name, SET)?;
            while !rdn.is_empty() {
                let mut attr = expect(&mut rdn, SEQUENCE)?;
                if expect(&mut attr, OID)? != COMMON_NAME.as_slice() {
                    continue;
                }
                if found.is_some() {
                    return None; // two common names: which user is meant?
                }
                let (tag, value) = next(&mut attr)?;
                if !TEXT.contains(&tag) {
                    return None;
                }
                found = Some(String::from_utf8(value.to_vec()).ok()?);
            }
        }
        found
    }

    /// UTCTime `YYMMDDHHMMSSZ` (years 1950-2049) or GeneralizedTime
    /// `YYYYMMDDHHMMSSZ`, as DER requires them, in ms since the Unix epoch.
    fn time_ms(tag: u8, text: &[u8]) -> Option<u64> {
        let (year, rest) = match tag {
            UTC_TIME if text.len() == 13 => {
                let yy = digits(&text[..2])?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
            }
            GENERALIZED_TIME if text.len() == 15 => (digits(&text[..4])?, &text[4..]),
            _ => return None,
        };
        if rest[10] != b'Z' {
            return None;
        }
        let [month, day, hour, minute, second] = [0, 2, 4, 6, 8].map(|i| digits(&rest[i..i + 2]));
        let (month, day, hour, minute, second) = (month?, day?, hour?, minute?, second?);
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let secs =
            days_since_epoch(year, month, day)? * 86_400 + hour * 3600 + minute * 60 + second;
        secs.checked_mul(1000)
    }

    fn digits(text: &[u8]) -> Option<u64> {
        text.iter().try_fold(0u64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
        })
    }

    /// Days from 1970-01-01 to a date of the Gregorian calendar, `None` before it:
    /// days since 0000-03-01, counting years from March so that a leap day ends
    /// its year, less that count for 1970-01-01 (719 468).
    fn days_since_epoch(year: u64, month: u64, day: u64) -> Option<u64> {
        let y = if month <= 2 {
            year.checked_sub(1)?
        } else {
            year
        };
        let march_based_month = (month + 9) % 12;
        let day_of_year = (153 * march_based_month + 2) / 5 + day - 1;
        let days = y * 365 + y / 4 - y / 100 + y / 400 + day_of_year;
        days.checked_sub(719_468)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dates_count_days_like_the_calendar() {
            assert_eq!(days_since_epoch(1970, 1, 1), Some(0));
            assert_eq!(days_since_epoch(2000, 3, 1), Some(11_017));
            assert_eq!(days_since_epoch(2024, 2, 29), Some(19_782));
            assert_eq!(time_ms(UTC_TIME, b"700101000001Z"), Some(1_000));
            assert_eq!(time_ms(UTC_TIME, b"491231235959Z"), Some(2_524_607_999_000));
            // 1950: before the epoch, long expired.
            assert_eq!(time_ms(UTC_TIME, b"500101000000Z"), None);
            assert_eq!(days_since_epoch(1969, 12, 31), None);
            assert_eq!(time_ms(UTC_TIME, b"7001010000+0100"), None);
            assert_eq!(time_ms(UTC_TIME, b"701301000000Z"), None);
            assert_eq!(time_ms(GENERALIZED_TIME, b"2067123009182aZ"), None);
        }

        #[test]
        fn truncated_or_overlong_input_is_none() {
            use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
            let pem = include_bytes!("testdata/cn-alice.pem");
            let der = CertificateDer::from_pem_slice(pem).unwrap().to_vec();
            assert!(subject_and_expiry(&der).is_some());
            for cut in [0, 1, 2, 4, 10, 100, der.len() / 2] {
                assert_eq!(subject_and_expiry(&der[..cut]), None, "cut at {cut}");
            }
            let mut long = der.clone();
            long[1] = 0x84; // a length of four bytes, far beyond the input
            assert_eq!(subject_and_expiry(&long), None);
            assert_eq!(subject_and_expiry(&[0x30, 0x80, 0, 0]), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_rustls::rustls::pki_types::pem::PemObject;

    /// Self-signed certificates made with `openssl req -x509 -subj ...`, valid until
    /// 2036-12-02 08:48:04 UTC.
    fn cert(pem: &str) -> ClientCert {
        ClientCert::from_der(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
    }

    #[test]
    fn the_common_name_names_the_user() {
        let c = cert(include_str!("testdata/cn-alice.pem")); // /CN=alice/O=dev
        assert_eq!(c.common_name.as_deref(), Some("alice"));
        assert_eq!(c.not_after_ms, 2_111_820_484_000);
    }

    #[test]
    fn no_common_name_or_two_name_nobody() {
        let c = cert(include_str!("testdata/no-cn.pem")); // /O=dev
        assert_eq!(c.common_name, None);
        let c = cert(include_str!("testdata/two-cns.pem")); // /CN=alice/CN=bob
        assert_eq!(c.common_name, None);
    }

    #[test]
    fn generalized_time_is_read_too() {
        // -days 15000: the end of validity is after 2049, so a GeneralizedTime.
        let c = cert(include_str!("testdata/generalized-time.pem")); // /CN=ci-deployer
        assert_eq!(c.common_name.as_deref(), Some("ci-deployer"));
        assert_eq!(c.not_after_ms, 3_092_462_304_000);
    }

    #[test]
    fn an_unparsable_certificate_names_nobody() {
        let c = ClientCert::from_der(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]));
        assert_eq!(c.common_name, None);
    }
}
