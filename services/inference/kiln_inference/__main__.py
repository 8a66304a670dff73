from kiln_inference.app import main

main()
