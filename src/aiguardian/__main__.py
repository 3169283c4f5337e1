from aiguardian.cli import main

main()
