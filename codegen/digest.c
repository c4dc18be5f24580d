/* digest.c -- the plan's checksums: SHA-256 (OpenSSL's libcrypto), as hex.
 * One definition shared by the plan writer (ptc) and the plan reader
 * (ptrun), so both sides agree on what a checksum is. */
#include <openssl/evp.h>
#include <stdio.h>

#include "codegen/codegen.h"

void ptc_sha256_hex(const void *data, size_t len, char out[65]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  int ok = EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
  PTC_ASSERT(ok == 1 && n == 32);
  for (unsigned i = 0; i < n; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
  out[64] = '\0';
}
