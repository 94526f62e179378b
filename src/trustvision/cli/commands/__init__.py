"""One module per ``trustvision`` command, each defining the command as a plain function (registered in
:mod:`trustvision.cli.app`): demo, audit, attack, explain, certify, uap, train, zeroshot."""
