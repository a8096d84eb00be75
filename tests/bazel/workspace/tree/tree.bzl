"""A rule whose one action writes a directory (a tree artifact)."""

def _file_tree_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run_shell(
        inputs = ctx.files.srcs,
        outputs = [out],
        arguments = [out.path, str(ctx.attr.count)] + [f.path for f in ctx.files.srcs],
        command = """
            set -e
            out=$1; count=$2; shift 2
            mkdir -p "$out/numbers/odd" "$out/numbers/even" "$out/copies"
            i=1
            while [ "$i" -le "$count" ]; do
                if [ $((i % 2)) = 1 ]; then kind=odd; else kind=even; fi
                seq 1 "$i" > "$out/numbers/$kind/upto-$i.txt"
                i=$((i + 1))
            done
            for f in "$@"; do cp "$f" "$out/copies/$(basename "$f")"; done
            printf '#!/bin/sh\\necho run from a tree artifact\\n' > "$out/run.sh"
            chmod +x "$out/run.sh"
            : > "$out/empty"
        """,
        mnemonic = "FileTree",
        progress_message = "Writing the tree %s" % out.short_path,
    )
    return [DefaultInfo(files = depset([out]))]

file_tree = rule(
    implementation = _file_tree_impl,
    attrs = {
        "count": attr.int(default = 10),
        "srcs": attr.label_list(allow_files = True),
    },
)
