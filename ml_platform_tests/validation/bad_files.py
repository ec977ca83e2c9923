"""Bad landed files, one per failure mode the batch gate must catch (shared by tests)."""

from pathlib import Path

HEADER = "sepal_length,sepal_width,petal_length,petal_width,target"
GOOD_ROWS = [f"{5.0 + i * 0.01:.2f},3.4,1.5,0.2,0" for i in range(10)] + [
    f"{6.0 + i * 0.01:.2f},2.9,4.5,1.5,1" for i in range(10)
]


def _rows(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


BAD_FILES: dict[str, tuple[bytes, str]] = {
    # name: (content, text the rejection report must contain)
    "empty.csv": (b"", "empty"),
    "binary.csv": (bytes(range(256)) * 4, "not"),
    "notes.json": (b'{"sepal_length": 5.1, "target": 0}\n', "JSON"),
    "malformed.csv": ((HEADER + '\n5.1,3.5,"1.4\n').encode(), "never closed"),
    "semicolons.csv": (_rows(*[r.replace(",", ";") for r in GOOD_ROWS]).replace(",", ";").encode(), "delimited by ';'"),
    "wrong_types.csv": (_rows(*GOOD_ROWS[:-1], "5.1,wide,1.4,0.2,0").encode(), "sepal_width"),
    "out_of_range.csv": (_rows(*GOOD_ROWS[:-1], "55.0,3.5,1.4,0.2,0").encode(), "between"),
    "unknown_class.csv": (_rows(*GOOD_ROWS[:-1], "5.1,3.5,1.4,0.2,7").encode(), "[7]"),
    "renamed_column.csv": (
        _rows(*GOOD_ROWS).replace("petal_width", "petal_wdth", 1).encode(),
        "petal_wdth",
    ),
    "nulls.csv": (_rows(*GOOD_ROWS[:-1], "5.1,,1.4,0.2,0").encode(), "null"),
}


def write_bad_file(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(BAD_FILES[name][0])
    return path


def write_good_file(folder: Path, name: str = "good.csv", rows: list[str] | None = None) -> Path:
    path = folder / name
    path.write_text(_rows(*(rows or GOOD_ROWS)))
    return path
